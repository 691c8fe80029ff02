// twfs: mounts a token warehouse (DESIGN.md) — KV-cache blocks as files, kept in a log of segments.
import BlockStore
import DRAMTier
import FuseBridge
import Logging
import Platform
import RadosTier
#if canImport(Glibc)
import Glibc
#endif

let usage = """
usage: twfs MOUNTPOINT [options]
       twfs STORE MOUNTPOINT -o store-options      (as mount.twfs and /etc/fstab call it)

options:
  --store DIR          where the segments live (default: $XDG_DATA_HOME/tokenwarehouse/default,
                       or ~/.local/share/tokenwarehouse/default)
  --capacity SIZE      bytes of segments to keep before evicting (default: 90% of the store's disk)
  --dram SIZE          size of the shared-memory DRAM tier in /dev/shm (default: 1G, at most half of
                       /dev/shm's free space; 0 disables it)
  --dram-name NAME     its file is DIR/tokenwarehouse-NAME (default: from the mount point)
  --dram-dir DIR       a tmpfs for the tier's file (default: /dev/shm); a tmpfs mounted with
                       huge=always gives the tier transparent huge pages (docs/dram-tier.md)
  --dram-group GROUP   the group that may map it read-only (default: the daemon's group)
  --dram-admit-writes on|off  committed blocks also enter the DRAM tier (default: on)
  --sync POLICY        always | batch | none: what close() promises (default: batch; docs/format.md)
  --sync-interval MS   under batch, milliseconds between the flusher's syncs (default: 5)
  --max-block SIZE     largest block accepted, larger writes fail with EFBIG (default: 256M)
  --segment-size SIZE  size at which a segment is sealed (default: capacity/16, 16M to 256M)
  --threads N          FUSE worker threads (default: 16)
  --prefetch-workers N       threads loading blocks into the DRAM tier ahead of reads (default: 2)
  --prefetch-bandwidth SIZE  bytes per second they may read from NVMe, 0 for no limit (default: 2G)
  --prefetch-depth N         blocks followed ahead along chain links and learned order (default: 8)
  --metrics ADDR       serve Prometheus metrics at http://ADDR/metrics (HOST:PORT, e.g. 127.0.0.1:9464)
  --cluster CONF       share blocks with other nodes through the Ceph cluster of CONF (a ceph.conf;
                       docs/cluster-tier.md); needs --pool
  --pool POOL          the RADOS pool holding the shared blocks
  --cluster-timeout S  seconds any cluster call may take before the block counts as missing (default: 3)
  --share POLICY       off | async | sync: what namespaces share unless ns-set says otherwise (default: async)
  --cluster-queue N    blocks waiting to be published before commits stop being shared (default: 4096)
  -f                   stay in the foreground
  -d                   libfuse debug output (implies -f)
  -o OPT[,OPT...]      store=, capacity=, dram=, dram_name=, dram_dir=, sync=, sync_interval=, max_block=, segment_size=, threads=,
                       dram_admit_writes=, prefetch_workers=, prefetch_bandwidth=, prefetch_depth=, metrics=,
                       cluster=, pool=, cluster_timeout=, share=, cluster_queue=
                       as above;
                       other options go to libfuse (allow_other, default_permissions, ro, ...)
SIZE accepts 4096, 512K, 512M, 20G, 1T.
"""

func fail(_ message: String, code: Int32 = 1) -> Never {
    _ = "twfs: \(message)\n".withCString { write(2, $0, strlen($0)) }
    exit(code)
}

func say(_ message: String) {
    _ = "\(message)\n".withCString { write(1, $0, strlen($0)) }
}

struct Options {
    var mountpoint = ""
    var store: String?
    var capacity: UInt64?
    var dram: UInt64 = 1 << 30
    var dramName: String?
    var dramDirectory = "/dev/shm"
    var dramGroup: String?
    var sync = SyncPolicy.batch
    var syncIntervalMilliseconds = 5.0
    var maxBlock = StoreConfiguration.defaultMaxBlockSize
    var segmentSize: UInt64?
    var threads = 16
    var prefetch = PrefetchSettings()
    var metrics: String?
    var admitWrites = true
    var foreground = false
    var debug = false
    var fuseOptions: [String] = []
    var cluster: String?
    var pool: String?
    var clusterTimeout = 3
    var remote = RemoteSettings()
}

/// Options that mount(8) passes along and that mean nothing to a FUSE mount.
let mountOnlyOptions: Set<String> = ["defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "rw"]

func size(_ text: String, _ what: String) -> UInt64 {
    guard let v = SizeParser.parse(text) else { fail("\(what): '\(text)' is not a size (examples: 512M, 20G, 1T)") }
    return v
}

func apply(key: String, value: String, to o: inout Options) -> Bool {
    switch key {
    case "store": o.store = value
    case "capacity": o.capacity = size(value, "capacity")
    case "dram": o.dram = size(value, "dram")
    case "dram_name": o.dramName = value
    case "dram_dir": o.dramDirectory = value
    case "dram_group": o.dramGroup = value
    case "sync":
        guard let p = SyncPolicy(rawValue: value) else { fail("sync must be always, batch or none, not '\(value)'") }
        o.sync = p
    case "max_block", "max-block": o.maxBlock = Int(size(value, "max-block"))
    case "sync_interval":
        guard let ms = Double(value), ms > 0, ms <= 10_000 else { fail("sync-interval must be 0.1 to 10000 milliseconds") }
        o.syncIntervalMilliseconds = ms
    case "segment_size", "segment-size": o.segmentSize = size(value, "segment-size")
    case "threads":
        guard let n = Int(value), n > 0, n <= 256 else { fail("threads must be 1 to 256") }
        o.threads = n
    case "metrics": o.metrics = value
    case "dram_admit_writes":
        guard value == "on" || value == "off" else { fail("dram-admit-writes must be on or off") }
        o.admitWrites = value == "on"
    case "prefetch_workers":
        guard let n = Int(value), n > 0, n <= 64 else { fail("prefetch-workers must be 1 to 64") }
        o.prefetch.workers = n
    case "prefetch_bandwidth": o.prefetch.bandwidth = size(value, "prefetch-bandwidth")
    case "prefetch_depth":
        guard let n = Int(value), n >= 0, n <= 1024 else { fail("prefetch-depth must be 0 to 1024") }
        o.prefetch.depth = n
    case "cluster": o.cluster = value
    case "pool": o.pool = value
    case "cluster_timeout":
        guard let n = Int(value), n >= 1, n <= 300 else { fail("cluster-timeout must be 1 to 300 seconds") }
        o.clusterTimeout = n
    case "share":
        guard let p = SharePolicy(rawValue: value) else { fail("share must be off, async or sync") }
        o.remote.defaultPolicy = p
    case "cluster_queue":
        guard let n = Int(value), n >= 1, n <= 1 << 20 else { fail("cluster-queue must be 1 to 1048576") }
        o.remote.queueCapacity = n
    default: return false
    }
    return true
}

func parse(_ arguments: [String]) -> Options {
    var o = Options()
    var positionals: [String] = []
    var i = 0
    func next(_ flag: String) -> String {
        i += 1
        guard i < arguments.count else { fail("\(flag) needs a value\n\(usage)") }
        return arguments[i]
    }
    while i < arguments.count {
        let a = arguments[i]
        switch a {
        case "-h", "--help": say(usage); exit(0)
        case "-f": o.foreground = true
        case "-d": o.debug = true; o.foreground = true
        case "-o":
            for item in next(a).split(separator: ",").map(String.init) {
                let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
                if parts.count == 2, apply(key: parts[0], value: parts[1], to: &o) { continue }
                if mountOnlyOptions.contains(item) || item.hasPrefix("x-") || item.hasPrefix("comment=") { continue }
                o.fuseOptions.append(item)
            }
        default:
            if a.hasPrefix("--") {
                let body = String(a.dropFirst(2))
                let parts = body.split(separator: "=", maxSplits: 1).map(String.init)
                let key = parts[0].replacingDashes()
                let value = parts.count == 2 ? parts[1] : next(a)
                if !apply(key: key, value: value, to: &o) { fail("unknown option \(a)\n\(usage)") }
            } else if a.hasPrefix("-") {
                fail("unknown option \(a)\n\(usage)")
            } else {
                positionals.append(a)
            }
        }
        i += 1
    }
    switch positionals.count {
    case 1: o.mountpoint = positionals[0]
    case 2:
        o.store = o.store ?? positionals[0]
        o.mountpoint = positionals[1]
    default: fail("give one mount point\n\(usage)")
    }
    return o
}

extension String {
    func replacingDashes() -> String { String(map { $0 == "-" ? "_" : $0 }) }
}

func absolute(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    guard let cwd = getcwd(nil, 0) else { return path }
    defer { free(cwd) }
    return String(cString: cwd) + "/" + path
}

func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

/// A mount point left by a daemon that died answers ENOTCONN; unmount it so we can mount again.
/// statfs always reaches the daemon (stat may be answered from the kernel's attribute cache).
func replaceStaleMount(_ mountpoint: String) {
    var sv = statvfs()
    if statvfs(mountpoint, &sv) == 0 {
        if isMounted(mountpoint) { fail("\(mountpoint) is already mounted by a live filesystem; unmount it first (fusermount3 -u \(mountpoint))", code: 2) }
        return
    }
    let e = errno
    if e == ENOENT && !isMounted(mountpoint) {
        do { try FileSystem.makeDirectories(mountpoint) } catch { fail("cannot create mount point: \(error)") }
        return
    }
    guard e == ENOTCONN || e == ECONNABORTED || isMounted(mountpoint) else { fail("mount point \(mountpoint): \(String(cString: strerror(e)))") }
    say("twfs: \(mountpoint) is a stale mount left by a daemon that died; unmounting it")
    if umount2(mountpoint, Int32(MNT_DETACH)) != 0 {
        let rc = system("fusermount3 -u -z '\(mountpoint)' 2>/dev/null")
        if rc != 0 { fail("could not unmount the stale mount at \(mountpoint): run 'fusermount3 -u -z \(mountpoint)' and try again", code: 2) }
    }
}

func isMounted(_ mountpoint: String) -> Bool {
    guard let bytes = try? FileSystem.readFile("/proc/self/mounts") else { return false }
    let target = absolute(mountpoint)
    return String(decoding: bytes, as: UTF8.self).split(separator: "\n").contains { line in
        let f = line.split(separator: " ")
        return f.count > 2 && String(f[1]) == target
    }
}

func storeBytes(_ directory: String) -> UInt64 {
    guard let names = try? FileSystem.listDirectory(directory) else { return 0 }
    var total: UInt64 = 0
    for n in names {
        var st = stat()
        if stat(directory + "/" + n, &st) == 0 { total += UInt64(st.st_size) }
    }
    return total
}

keepLargeAllocationsInHeap()
LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = .info
    return handler
}
var options = parse(Array(CommandLine.arguments.dropFirst()))
options.mountpoint = absolute(options.mountpoint)
if (options.cluster == nil) != (options.pool == nil) { fail("--cluster and --pool go together (the cluster's ceph.conf and the pool of shared blocks)") }
if let conf = options.cluster {
    options.cluster = absolute(conf)
    guard FileSystem.exists(options.cluster!) else { fail("--cluster \(options.cluster!): no such file (give the cluster's ceph.conf)") }
}
let storeDirectory: String
if let s = options.store {
    storeDirectory = absolute(s)
} else {
    let base = environment("XDG_DATA_HOME") ?? ((environment("HOME") ?? "/tmp") + "/.local/share")
    storeDirectory = base + "/tokenwarehouse/default"
    say("twfs: no --store given; using \(storeDirectory)")
}

replaceStaleMount(options.mountpoint)
do { try FileSystem.makeDirectories(storeDirectory, mode: 0o750) } catch { fail("cannot create the store directory: \(error)") }
let capacity = options.capacity ?? {
    let space = (try? FileSystem.space(of: storeDirectory)) ?? (total: 0, available: 0)
    return UInt64(Double(space.available + storeBytes(storeDirectory)) * 0.9)
}()
if capacity < 64 << 20 { fail("capacity \(SizeParser.format(capacity)) is too small; give --capacity of at least 64M") }

let configuration = StoreConfiguration(capacity: capacity, segmentSize: options.segmentSize, maxBlockSize: options.maxBlock,
                                       sync: options.sync, batchIntervalNanoseconds: UInt64(options.syncIntervalMilliseconds * 1e6))
let store: BlockStore
do {
    store = try BlockStore(directory: storeDirectory, configuration: configuration)
} catch let e as StoreError {
    if case .locked(let why) = e { fail(why, code: 2) }
    fail("cannot open the store in \(storeDirectory): \(e)", code: 2)
} catch {
    fail("cannot open the store in \(storeDirectory): \(error)", code: 2)
}
let r = store.recovery
say("twfs: store \(storeDirectory): \(r.blocks) blocks, capacity \(SizeParser.format(capacity)), sync \(options.sync.rawValue); "
    + "recovered from \(r.segmentsFromSummary) summaries + \(r.segmentsScanned) scanned segments in \(Double(r.nanoseconds / 1_000_000) / 1000) s"
    + (r.corruptRecords > 0 ? "; \(r.corruptRecords) corrupt records skipped" : "")
    + (r.tornTailBytes > 0 ? "; torn tail of \(r.tornTailBytes) bytes truncated" : ""))

var fuseOptions = ["fsname=twfs:" + storeDirectory, "subtype=twfs"] + options.fuseOptions
if getuid() == 0 {
    // As root, other users may reach the mount; the kernel enforces namespace owners and modes.
    for o in ["allow_other", "default_permissions"] where !fuseOptions.contains(o) { fuseOptions.append(o) }
} else if !fuseOptions.contains("default_permissions") {
    fuseOptions.append("default_permissions")
}

var tier: DRAMTier? = nil
if options.dram > 0 {
    let name = options.dramName ?? String(options.mountpoint.split(separator: "/").joined(separator: "-"))
    guard BlockName.isValidNamespace(name) || name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.@+".contains($0) }) else {
        fail("--dram-name '\(name)' may only hold letters, digits and -_.@+")
    }
    var size = Int(options.dram)
    let directory = absolute(options.dramDirectory)
    guard let shm = (try? FileSystem.space(of: directory))?.available else { fail("--dram-dir \(directory) does not exist") }
    if UInt64(size) > shm / 2 {
        size = Int(shm / 2)
        say("twfs: \(directory) has \(SizeParser.format(shm)) free; the DRAM tier gets \(SizeParser.format(UInt64(size)))")
    }
    var group: gid_t? = nil
    if let g = options.dramGroup {
        guard let id = groupID(named: g) else { fail("--dram-group: no group named '\(g)'") }
        group = id
    }
    do {
        tier = try DRAMTier(path: directory + "/tokenwarehouse-" + name, size: size, group: group)
        say("twfs: DRAM tier \(tier!.path), \(SizeParser.format(UInt64(size)))")
    } catch {
        try? store.close()
        fail("cannot create the DRAM tier: \(error) (use --dram 0 to run without it)", code: 2)
    }
}

var settings = MountSettings()
settings.storeDirectory = storeDirectory
settings.syncPolicy = options.sync.rawValue
settings.admitWrites = options.admitWrites
// The connection is opened by the sharing thread after daemonizing (librados starts threads, which do
// not survive fork); until then, and whenever the cluster is away, misses are plain misses.
let remote = options.cluster.map { conf in
    RemoteSharing(tier: RadosTier(configurationFile: conf, pool: options.pool!, timeoutSeconds: options.clusterTimeout),
                  store: store, dram: tier, settings: options.remote)
}
let filesystem = WarehouseFileSystem(store: store, tier: tier, settings: settings, prefetch: options.prefetch, remote: remote)
let session: FuseSession
do {
    session = try FuseSession(filesystem: filesystem, mountpoint: options.mountpoint, options: fuseOptions, debug: options.debug)
} catch {
    tier?.close()
    try? store.close()
    fail("cannot mount \(options.mountpoint): \(error)", code: 2)
}
say("twfs: mounted at \(options.mountpoint)")
// Bound before daemonizing so a taken port fails the mount command; served after (threads do not fork).
var metricsServer: MetricsServer? = nil
if let address = options.metrics {
    do {
        let (fs, st, dram) = (filesystem, store, tier)
        metricsServer = try MetricsServer(address: address) {
            fs.metrics.render(store: st, tier: dram, prefetcher: fs.prefetcher) + Array((fs.remote?.metricsText() ?? "").utf8)
        }
        say("twfs: metrics at http://\(metricsServer!.address):\(metricsServer!.port)/metrics")
    } catch {
        session.close()
        tier?.close()
        try? store.close()
        fail("cannot serve metrics at \(address): \(error)", code: 2)
    }
}
session.daemonize(foreground: options.foreground)
store.startBackgroundWork()
filesystem.prefetcher?.start()
remote?.start()
if let remote { say("twfs: sharing blocks through \(remote.tier.location) (\(options.cluster!)), default policy \(options.remote.defaultPolicy.rawValue)") }
metricsServer?.start()
let rc = session.run(threads: options.threads)
// libfuse's loop returns the number of the signal that stopped it (SIGINT, SIGTERM, SIGHUP): a clean stop.
let cleanExit = rc == 0 || rc == SIGINT || rc == SIGTERM || rc == SIGHUP
session.close()
metricsServer?.stop()
filesystem.stopCompaction()
filesystem.prefetcher?.stop()
remote?.stop()
tier?.close()
do {
    try store.close()
} catch {
    fail("unmounted, but flushing the store failed: \(error)", code: 3)
}
exit(cleanExit ? 0 : 1)
