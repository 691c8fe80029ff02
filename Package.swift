// swift-tools-version:6.0
// The module graph and what each module is for: docs/architecture.md.
import PackageDescription

let collections: [Target.Dependency] = [.product(name: "DequeModule", package: "swift-collections")]

let package = Package(
    name: "TokenWarehouse",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "twfs", targets: ["twfs"]),
        .executable(name: "twctl", targets: ["twctl"]),
        .library(name: "BlockStore", targets: ["BlockStore"]),
        // Swift clients read the DRAM tier with `TierReader` (no system call per block); it links only
        // WarehouseCore and Platform, not the store.
        .library(name: "DRAMTier", targets: ["DRAMTier"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
    ],
    targets: [
        // System libraries, found by pkg-config (CRados by its module map: Debian's librados-dev has no
        // pkg-config file). Each has a shim header that pins what Swift cannot import.
        .systemLibrary(name: "CFuse", path: "Sources/CFuse", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .systemLibrary(name: "CLZ4", path: "Sources/CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CXXHash", path: "Sources/CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        .systemLibrary(name: "CRados", path: "Sources/CRados", providers: [.apt(["librados-dev"])]),
        // glibc calls and macros Swift's Glibc module hides (O_DIRECT, memfd, SCM_RIGHTS, atomics); only Platform imports it.
        .systemLibrary(name: "CTokenWarehouse", path: "Sources/CTokenWarehouse"),

        // The one place that touches C for the rest: descriptors, mappings, threads, sockets, errno.
        .target(name: "Platform", dependencies: ["CTokenWarehouse"]),
        // Block keys, the naming rules, checksums, little-endian codecs: what every module shares.
        .target(name: "WarehouseCore", dependencies: ["CXXHash"]),
        // The log of segments on NVMe: formats, index, directory trees, recovery, eviction, compaction.
        .target(name: "BlockStore", dependencies: ["WarehouseCore", "Platform", "CLZ4"]),
        // The shared-memory DRAM tier: layout, S3-FIFO placement, sequence-locked table, `TierReader`.
        .target(name: "DRAMTier", dependencies: ["WarehouseCore", "Platform"] + collections),
        // Loads blocks into the DRAM tier before they are read: hints, chain links, learned order.
        .target(name: "Prefetcher", dependencies: ["BlockStore", "DRAMTier", "WarehouseCore", "Platform"] + collections),
        // The shared tier across nodes: object format, publisher, fetcher, the `RemoteTier` protocol.
        .target(name: "ClusterTier", dependencies: ["BlockStore", "DRAMTier", "WarehouseCore", "Platform"] + collections),
        // `RemoteTier` on Ceph RADOS (the only importer of CRados; docs/cluster-tier.md).
        .target(name: "RadosTier", dependencies: ["ClusterTier", "WarehouseCore", "Platform", "CRados"]),
        // The typed schema of `.tw/status`, `.tw/ctl` requests and answers, shared by twfs and twctl.
        .target(name: "ControlPlane", dependencies: ["WarehouseCore"]),
        // Prometheus exposition of the status values, and the HTTP server that serves it.
        .target(name: "MetricsExporter", dependencies: ["ControlPlane", "Platform"] + collections),
        // The file system's semantics (docs/fuse.md) over the store and tiers: no CFuse, tested in-process.
        .target(name: "WarehouseFS", dependencies: ["BlockStore", "DRAMTier", "Prefetcher", "ClusterTier", "ControlPlane",
                                                   "WarehouseCore", "Platform", .product(name: "Logging", package: "swift-log")]),
        // The only importer of CFuse: libfuse's low-level API, one reply per request.
        .target(name: "FuseBridge", dependencies: ["WarehouseFS", "Platform", "CFuse"]),
        // Sizes and durations on the command line, shared by twfs and twctl.
        .target(name: "CommandLineTypes", dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")]),
        // Mooncake-format traces, synthetic workloads, offline bounds and the planner's simulation.
        .target(name: "Traces", dependencies: ["BlockStore", "DRAMTier", "WarehouseCore",
                                               .product(name: "HeapModule", package: "swift-collections")]),

        .executableTarget(name: "twfs", dependencies: ["FuseBridge", "WarehouseFS", "BlockStore", "DRAMTier", "Prefetcher",
                                                      "ClusterTier", "RadosTier", "MetricsExporter", "ControlPlane", "Platform",
                                                      "WarehouseCore", "CommandLineTypes",
                                                      .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                                      .product(name: "Logging", package: "swift-log")], path: "Mount/twfs"),
        .executableTarget(name: "twctl", dependencies: ["BlockStore", "DRAMTier", "Platform", "WarehouseCore", "Traces",
                                                       "ControlPlane", "CommandLineTypes",
                                                       .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          path: "Tools/twctl"),

        .testTarget(name: "WarehouseCoreTests", dependencies: ["WarehouseCore", "CXXHash"]),
        .testTarget(name: "PlatformTests", dependencies: ["Platform"]),
        .testTarget(name: "BlockStoreTests", dependencies: ["BlockStore", "WarehouseCore", "Platform"]),
        .testTarget(name: "DRAMTierTests", dependencies: ["DRAMTier", "WarehouseCore", "Platform"]),
        .testTarget(name: "TracesTests", dependencies: ["Traces", "BlockStore", "DRAMTier", "WarehouseCore"]),
        .testTarget(name: "ClusterTierTests", dependencies: ["ClusterTier", "BlockStore", "WarehouseCore", "Platform"]),
        .testTarget(name: "ControlPlaneTests", dependencies: ["ControlPlane", "MetricsExporter", "WarehouseCore"]),
        .testTarget(name: "WarehouseFSTests", dependencies: ["WarehouseFS", "BlockStore", "DRAMTier", "WarehouseCore", "Platform"]),
        .testTarget(name: "CommandLineTypesTests", dependencies: ["CommandLineTypes"]),
        .testTarget(name: "PrefetcherTests", dependencies: ["Prefetcher", "BlockStore", "DRAMTier", "WarehouseCore", "Platform"]),

        // libFuzzer targets (Tools/fuzz/run.sh builds them with -sanitize=fuzzer,address -D FUZZING;
        // built plainly they replay a corpus). CLibFuzzer declares libFuzzer's driver entry.
        .systemLibrary(name: "CLibFuzzer", path: "Tools/fuzz/CLibFuzzer"),
        // The entry every target shares: libFuzzer's driver, or corpus replay and seed writing.
        .target(name: "FuzzSupport", dependencies: ["Platform", "CLibFuzzer"], path: "Tools/fuzz/FuzzSupport"),
        .executableTarget(name: "FuzzRecordDecoder", dependencies: ["BlockStore", "WarehouseCore", "FuzzSupport"], path: "Tools/fuzz/FuzzRecordDecoder"),
        .executableTarget(name: "FuzzBlockNames", dependencies: ["BlockStore", "WarehouseCore", "FuzzSupport"], path: "Tools/fuzz/FuzzBlockNames"),
        .executableTarget(name: "FuzzControlInput", dependencies: ["BlockStore", "ControlPlane", "WarehouseCore", "FuzzSupport"],
                          path: "Tools/fuzz/FuzzControlInput"),
    ]
)
