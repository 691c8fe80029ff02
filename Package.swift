// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "TokenWarehouse",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "twfs", targets: ["twfs"]),
        .executable(name: "twctl", targets: ["twctl"]),
        .library(name: "BlockStore", targets: ["BlockStore"]),
        // Swift clients read the DRAM tier with `TierReader` (no system call per block).
        .library(name: "DRAMTier", targets: ["DRAMTier"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // System libraries, found by pkg-config. Each has a shim header that pins what Swift can't import.
        .systemLibrary(name: "CFuse", path: "Sources/CFuse", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .systemLibrary(name: "CLZ4", path: "Sources/CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CXXHash", path: "Sources/CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        // The one place errno becomes a Swift error; file descriptors, mappings, aligned buffers, locks.
        .systemLibrary(name: "CSystem", path: "Sources/CSystem"),
        // librados (Debian's librados-dev has no pkg-config file: the module map links `rados`).
        .systemLibrary(name: "CRados", path: "Sources/CRados", providers: [.apt(["librados-dev"])]),
        .target(name: "Platform", dependencies: ["CSystem"]),
        // The log of segments on NVMe: record codec, index, recovery, eviction, compaction.
        .target(name: "BlockStore", dependencies: ["Platform", "CLZ4", "CXXHash"]),
        // The shared-memory DRAM tier: layout, S3-FIFO placement, sequence-locked table.
        .target(name: "DRAMTier", dependencies: ["BlockStore", "Platform"]),
        // The shared tier across nodes on Ceph RADOS (the only importer of CRados; docs/cluster-tier.md).
        .target(name: "RadosTier", dependencies: ["BlockStore", "Platform", "CRados"]),
        // The only importer of CFuse: POSIX semantics of DESIGN.md on libfuse's low-level API.
        // Traces in the Mooncake format, synthetic workloads, offline bounds and the planner's simulation.
        .target(name: "Traces", dependencies: ["BlockStore", "DRAMTier"]),
        // Line charts as PNG, without dependencies (the planner's plot).
        .target(name: "Charts"),
        .target(name: "FuseBridge", dependencies: ["BlockStore", "DRAMTier", "Platform", "CFuse",
                                                  .product(name: "Logging", package: "swift-log"),
                                                  .product(name: "Prometheus", package: "swift-prometheus")]),
        .executableTarget(name: "twfs", dependencies: ["FuseBridge", "BlockStore", "DRAMTier", "Platform", "RadosTier",
                                                      .product(name: "Logging", package: "swift-log")], path: "Mount/twfs"),
        .executableTarget(
            name: "twctl",
            dependencies: ["BlockStore", "DRAMTier", "Platform", "Traces", "Charts", "CSystem",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Tools/twctl"),
        .testTarget(name: "BlockStoreTests", dependencies: ["BlockStore", "Platform"]),
        .testTarget(name: "DRAMTierTests", dependencies: ["DRAMTier", "BlockStore", "Platform"]),
        .testTarget(name: "TracesTests", dependencies: ["Traces", "BlockStore", "DRAMTier"]),
        .testTarget(name: "ChartsTests", dependencies: ["Charts"]),
        // libFuzzer targets (Tools/fuzz/run.sh builds them with -sanitize=fuzzer,address -D FUZZING;
        // built plainly they replay a corpus). CLibFuzzer declares libFuzzer's driver entry.
        .systemLibrary(name: "CLibFuzzer", path: "Tools/fuzz/CLibFuzzer"),
        // The entry every target shares: libFuzzer's driver, or corpus replay and seed writing.
        .target(name: "FuzzSupport", dependencies: ["Platform", "CLibFuzzer"], path: "Tools/fuzz/FuzzSupport"),
        .executableTarget(name: "FuzzRecordDecoder", dependencies: ["BlockStore", "FuzzSupport"], path: "Tools/fuzz/FuzzRecordDecoder"),
        .executableTarget(name: "FuzzBlockNames", dependencies: ["BlockStore", "FuzzSupport"], path: "Tools/fuzz/FuzzBlockNames"),
    ]
)
