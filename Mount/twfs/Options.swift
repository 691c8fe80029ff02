import ArgumentParser
import BlockStore
import CommandLineTypes
import Prefetcher
import WarehouseFS

/// twfs's command line (docs/operations.md "twfs"). `-o k=v,...` (how mount(8) and /etc/fstab pass
/// options) is rewritten into the same flags before parsing (`OptionList`), so both forms mean the same.
struct TWFS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "twfs",
        abstract: "Mount a TokenWarehouse: KV-cache blocks as files, kept in a log of segments on local disk.",
        discussion: """
        twfs MOUNTPOINT [options]
        twfs STORE MOUNTPOINT -o OPTIONS      (as mount.twfs and /etc/fstab call it)

        -o takes the options below as key=value (store=, capacity=, dram=, sync=, ...; dashes or \
        underscores); other -o options go to libfuse (allow_other, default_permissions, ro, ...).
        Sizes: 4096, 512K, 512M, 20G, 1T. Durations: 90, 30s, 10m, 2h.
        """)

    @Argument(help: "The mount point, or the store then the mount point.") var places: [String]

    @Option(help: "Where the segments live (default: $XDG_DATA_HOME/tokenwarehouse/default, or ~/.local/share/...).")
    var store: String?
    @Option(help: "Bytes of segments to keep before evicting (default: 90% of the store's disk).") var capacity: ByteCount?
    @Option(help: "Memory of the shared DRAM tier, all security domains together (default: 1G, at most half the memory free; 0: none).")
    var dram: ByteCount = ByteCount(bytes: 1 << 30)
    @Option(help: "A tmpfs for the tier's memory (default: a private tmpfs with huge pages as root, memory files otherwise).")
    var dramDir: String?
    @Option(help: "Ignored: access to the DRAM tier follows the namespaces' permissions (docs/dram-tier.md).")
    var dramGroup: String?
    @Option(help: "Ignored: tier files are named uniquely per daemon.") var dramName: String?
    @Option(help: "Committed blocks also enter the DRAM tier: on or off.") var dramAdmitWrites: OnOff = .on
    @Option(help: "Reads through the page cache: reused (blocks read again within 10 s go into it; others are read with direct I/O, one copy) or always (docs/fuse.md \"Reading\").")
    var readCache: ReadCache = .reused
    @Option(help: "What close() promises: always, batch or none (docs/format.md \"Durability\").") var sync: SyncPolicy = .batch
    @Option(help: "Under batch, milliseconds between the flusher's syncs (0.1 to 10000).") var syncInterval: Double = 5
    @Option(help: "Largest block accepted; larger writes fail with EFBIG.") var maxBlock = ByteCount(bytes: UInt64(StoreConfiguration.defaultMaxBlockSize))
    @Option(help: "Size at which a segment is sealed (default: capacity/16, 16M to 256M).") var segmentSize: ByteCount?
    @Option(help: "FUSE worker threads (1 to 256).") var threads = 16
    @Option(help: "Threads loading blocks into the DRAM tier ahead of reads (1 to 64).") var prefetchWorkers = 2
    @Option(help: "Bytes per second they may read from NVMe (0: no limit).") var prefetchBandwidth = ByteCount(bytes: 2 << 30)
    @Option(help: "Blocks followed ahead along chain links and learned order (0 to 1024).") var prefetchDepth = 8
    @Option(help: "Bytes of blocks being written that all users may hold in memory (default: half the memory, at most 64G).")
    var maxStaged: ByteCount?
    @Option(help: "Bytes of blocks being written one user may hold (default: half of --max-staged).") var maxStagedPerUser: ByteCount?
    @Option(help: "Serve Prometheus metrics at http://ADDR/metrics: PORT or :PORT (loopback), or HOST:PORT.") var metrics: String?
    @Option(help: "Share blocks with other nodes through the Ceph cluster of this ceph.conf (needs --pool).") var cluster: String?
    @Option(help: "The RADOS pool holding the shared blocks.") var pool: String?
    @Option(help: "Seconds any cluster call may take before the block counts as missing (1 to 300).") var clusterTimeout = 3
    @Option(help: "What namespaces share unless ns-set says otherwise: off, async or sync.") var share: SharePolicy = .async
    @Option(help: "Blocks waiting to be published before commits stop being shared (1 to 1048576).") var clusterQueue = 4096
    @Option(name: .customLong("fuse-option"), help: .hidden) var fuseOptions: [String] = []
    @Flag(name: .customShort("f"), help: "Stay in the foreground.") var foreground = false
    @Flag(name: .customShort("d"), help: "libfuse debug output (implies -f).") var debug = false

    enum OnOff: String, ExpressibleByArgument, CaseIterable { case on, off }

    /// The options that take a value, by their long names: what `-o name=value` may set.
    static let valueOptions: Set<String> = [
        "store", "capacity", "dram", "dram-dir", "dram-group", "dram-name", "dram-admit-writes", "read-cache", "sync", "sync-interval",
        "max-block", "segment-size", "threads", "prefetch-workers", "prefetch-bandwidth", "prefetch-depth", "max-staged",
        "max-staged-per-user", "metrics", "cluster", "pool", "cluster-timeout", "share", "cluster-queue",
    ]

    func validate() throws {
        guard (1...2).contains(places.count) else { throw ValidationError("give the mount point (or the store and the mount point)") }
        guard syncInterval >= 0.1 && syncInterval <= 10_000 else { throw ValidationError("--sync-interval must be 0.1 to 10000 milliseconds") }
        guard (1...256).contains(threads) else { throw ValidationError("--threads must be 1 to 256") }
        guard (1...64).contains(prefetchWorkers) else { throw ValidationError("--prefetch-workers must be 1 to 64") }
        guard (0...1024).contains(prefetchDepth) else { throw ValidationError("--prefetch-depth must be 0 to 1024") }
        guard (1...300).contains(clusterTimeout) else { throw ValidationError("--cluster-timeout must be 1 to 300 seconds") }
        guard (1...(1 << 20)).contains(clusterQueue) else { throw ValidationError("--cluster-queue must be 1 to 1048576") }
        guard (cluster == nil) == (pool == nil) else { throw ValidationError("--cluster and --pool go together (the cluster's ceph.conf and the pool of shared blocks)") }
        guard maxBlock.bytes >= 4096 && maxBlock.bytes <= 1 << 31 else { throw ValidationError("--max-block must be 4K to 2G") }
        if let c = capacity, c.bytes < 64 << 20 { throw ValidationError("--capacity \(c) is too small; give at least 64M") }
        if let c = capacity, c.bytes > 1 << 60 { throw ValidationError("--capacity \(c) is larger than any disk (at most 1E)") }
        if let s = segmentSize, s.bytes < 1 << 20 || s.bytes > 4 << 30 { throw ValidationError("--segment-size must be 1M to 4G") }
        if dram.bytes > 0 && dram.bytes < 8 << 20 { throw ValidationError("--dram must be 0 (no tier) or at least 8M") }
    }

    var mountpoint: String { places.last! }
    var storeArgument: String? { store ?? (places.count == 2 ? places[0] : nil) }
}

extension SyncPolicy: ExpressibleByArgument {}
extension SharePolicy: ExpressibleByArgument {}

/// Rewrites `-o k=v,...` into `--k v` for the options twfs knows, drops what only mount(8) means, and
/// passes the rest to libfuse (`--fuse-option`).
enum OptionList {
    /// Options mount(8) passes along that mean nothing to a FUSE mount.
    static let mountOnly: Set<String> = ["defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "rw"]

    static func expand(_ arguments: [String], known: Set<String>) -> [String] {
        var out: [String] = []
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a == "-o", i + 1 < arguments.count {
                for item in arguments[i + 1].split(separator: ",").map(String.init) {
                    let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
                    let key = parts[0].replacingOccurrences(of: "_", with: "-")
                    if parts.count == 2, known.contains(key) {
                        out += ["--\(key)", parts[1]]
                    } else if mountOnly.contains(item) || item.hasPrefix("x-") || item.hasPrefix("comment=") {
                        continue
                    } else {
                        out += ["--fuse-option", item]
                    }
                }
                i += 2
                continue
            }
            out.append(a)
            i += 1
        }
        return out
    }
}

extension String {
    func replacingOccurrences(of a: Character, with b: Character) -> String { String(map { $0 == a ? b : $0 }) }
    func replacingOccurrences(of a: String, with b: String) -> String {
        guard a.count == 1, b.count == 1 else { return self }
        return replacingOccurrences(of: a.first!, with: b.first!)
    }
}

extension ReadCache: ExpressibleByArgument {}
