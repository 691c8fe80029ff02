// twfs: mounts a token warehouse (docs/design.md): KV-cache blocks as files, kept in a log of segments,
// with a shared-memory DRAM tier, a prefetcher, an optional cluster tier and Prometheus metrics. This
// file wires the modules together; what each does is in docs/architecture.md.
import ArgumentParser
import BlockStore
import ClusterTier
import CommandLineTypes
import ControlPlane
import DRAMTier
import FuseBridge
import Logging
import MetricsExporter
import Platform
import Prefetcher
import RadosTier
import WarehouseCore
import WarehouseFS
#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String, code: Int32 = 1) -> Never {
    _ = "twfs: \(message)\n".withCString { write(2, $0, strlen($0)) }
    exit(code)
}

func say(_ message: String) {
    _ = "\(message)\n".withCString { write(1, $0, strlen($0)) }
}

func absolute(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    guard let cwd = getcwd(nil, 0) else { return path }
    defer { free(cwd) }
    return String(cString: cwd) + "/" + path
}

func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

/// The mount table's fields escape space, tab, newline and backslash as octal (`\040`).
func unescapeMountField(_ field: Substring) -> String {
    var out: [UInt8] = []
    let bytes = Array(field.utf8)
    var i = 0
    while i < bytes.count {
        if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
           let v = UInt8(String(decoding: bytes[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
            out.append(v)
            i += 4
        } else {
            out.append(bytes[i])
            i += 1
        }
    }
    return String(decoding: out, as: UTF8.self)
}

func isMounted(_ mountpoint: String) -> Bool {
    guard let bytes = try? FileSystem.readFile("/proc/self/mounts") else { return false }
    let target = absolute(mountpoint)
    return String(decoding: bytes, as: UTF8.self).split(separator: "\n").contains { line in
        let f = line.split(separator: " ")
        return f.count > 2 && unescapeMountField(f[1]) == target
    }
}

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

func storeBytes(_ directory: String) -> UInt64 {
    guard let names = try? FileSystem.listDirectory(directory) else { return 0 }
    var total: UInt64 = 0
    for n in names {
        var st = stat()
        if lstat(directory + "/" + n, &st) == 0 { total += UInt64(st.st_size) }
    }
    return total
}

// MARK: Parse

keepLargeAllocationsInHeap()
LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = .info
    return handler
}
let logger = Logger(label: "twfs")
let options: TWFS
do {
    options = try TWFS.parse(OptionList.expand(Array(CommandLine.arguments.dropFirst()), known: TWFS.valueOptions))
} catch {
    TWFS.exit(withError: error)
}
if options.dramGroup != nil { say("twfs: --dram-group is ignored: who may map the DRAM tier follows the namespaces' permissions") }
if options.dramName != nil { say("twfs: --dram-name is ignored: tier files are private to each daemon") }

let mountpoint = absolute(options.mountpoint)
let clusterConf = options.cluster.map(absolute)
if let conf = clusterConf, !FileSystem.exists(conf) { fail("--cluster \(conf): no such file (give the cluster's ceph.conf)") }
let storeDirectory: String
if let s = options.storeArgument {
    storeDirectory = absolute(s)
} else {
    let base = environment("XDG_DATA_HOME") ?? ((environment("HOME") ?? "/tmp") + "/.local/share")
    storeDirectory = base + "/tokenwarehouse/default"
    say("twfs: no --store given; using \(storeDirectory)")
}

// MARK: Store

replaceStaleMount(mountpoint)
do { try FileSystem.makeDirectories(storeDirectory, mode: 0o700) } catch { fail("cannot create the store directory: \(error)") }
let capacity = options.capacity?.bytes ?? {
    let space = (try? FileSystem.space(of: storeDirectory)) ?? (total: 0, available: 0)
    return UInt64(Double(space.available + storeBytes(storeDirectory)) * 0.9)
}()
if capacity < 64 << 20 { fail("capacity \(ByteCount.approximate(capacity)) is too small; give --capacity of at least 64M") }

let configuration = StoreConfiguration(capacity: capacity, segmentSize: options.segmentSize?.bytes, maxBlockSize: Int(options.maxBlock.bytes),
                                       sync: options.sync, batchIntervalNanoseconds: UInt64(options.syncInterval * 1e6))
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
say("twfs: store \(storeDirectory): \(r.blocks) blocks, \(r.directories) directories, capacity \(ByteCount.approximate(capacity)), sync \(options.sync.rawValue); "
    + (r.indexSnapshot == "loaded" ? "index read from the snapshot of the last clean stop"
                                    : "recovered from \(r.segmentsFromSummary) summaries + \(r.segmentsScanned) scanned segments")
    + " in \((r.seconds * 1000).rounded() / 1000) s"
    + (r.indexSnapshot.hasPrefix("ignored") ? "; index snapshot \(r.indexSnapshot)" : "")
    + (r.corruptRecords > 0 ? "; \(r.corruptRecords) corrupt records skipped" : "")
    + (r.tornTailBytes > 0 ? "; torn tail of \(r.tornTailBytes) bytes truncated" : "")
    + (r.directoriesRestored > 0 ? "; \(r.directoriesRestored) directories restored from block paths" : ""))

var fuseOptions = ["fsname=twfs:" + storeDirectory, "subtype=twfs"] + options.fuseOptions
if getuid() == 0 {
    // As root, other users may reach the mount; the kernel enforces owners and modes.
    for o in ["allow_other", "default_permissions"] where !fuseOptions.contains(o) { fuseOptions.append(o) }
} else if !fuseOptions.contains("default_permissions") {
    fuseOptions.append("default_permissions")
}

// MARK: DRAM tier

let runtime: RuntimeDirectory
do { runtime = try RuntimeDirectory(label: String(mountpoint.split(separator: "/").joined(separator: "-"))) } catch {
    try? store.close()
    fail("cannot make a runtime directory for the DRAM tier's socket: \(error)", code: 2)
}
var tiers: DRAMTiers? = nil
var broker: TierBroker? = nil
if options.dram.bytes > 0 {
    var size = Int(options.dram.bytes)
    let available = UInt64(max(0, sysconf(Int32(_SC_AVPHYS_PAGES)))) * UInt64(max(1, sysconf(Int32(_SC_PAGESIZE))))
    if available > 0 && UInt64(size) > available / 2 {
        size = Int(available / 2)
        say("twfs: \(ByteCount.approximate(available)) of memory is free; the DRAM tier gets \(ByteCount.approximate(UInt64(size)))")
    }
    let storage = TierStorage.prepare(directory: options.dramDir.map(absolute), privateDirectory: runtime.path, size: size)
    do { try storage.check() } catch {
        storage.close()
        runtime.remove()
        try? store.close()
        fail("cannot make the DRAM tier's memory (\(storage.reason)): \(error) (give --dram-dir a tmpfs directory you can write, or --dram 0)", code: 2)
    }
    let set = DRAMTiers(budget: size, storage: storage, namePrefix: String(runtime.path.split(separator: "/").last ?? "tier"))
    do {
        broker = try TierBroker(socketPath: runtime.path + "/tier.sock", tiers: set, liveness: runtime.liveness)
        tiers = set
        say("twfs: DRAM tier of \(ByteCount.approximate(UInt64(size))) in \(storage.reason); clients reach it through \(runtime.path)/tier.sock")
    } catch {
        storage.close()
        runtime.remove()
        try? store.close()
        fail("cannot serve the DRAM tier: \(error) (use --dram 0 to run without it)", code: 2)
    }
}

var settings = MountSettings()
settings.storeDirectory = storeDirectory
settings.admitWrites = options.dramAdmitWrites == .on
settings.readCache = options.readCache
if let total = options.maxStaged { settings.limits.stagedBytesTotal = total.bytes }
settings.limits.stagedBytesPerUser = options.maxStagedPerUser?.bytes ?? settings.limits.stagedBytesTotal / 2
var prefetch = PrefetchSettings()
prefetch.workers = options.prefetchWorkers
prefetch.bandwidth = options.prefetchBandwidth.bytes
prefetch.depth = options.prefetchDepth
var remoteSettings = RemoteSettings()
remoteSettings.defaultPolicy = options.share
remoteSettings.queueCapacity = options.clusterQueue
// The connection is opened by the sharing thread after daemonizing (librados starts threads, which do
// not survive fork); until then, and whenever the cluster is away, misses are plain misses.
let cluster = clusterConf.map { conf in
    ClusterTier(tier: RadosTier(configurationFile: conf, pool: options.pool!, timeoutSeconds: options.clusterTimeout),
                store: store, dram: tiers, settings: remoteSettings, log: { logger.warning("\($0)") })
}
let filesystem = WarehouseFileSystem(store: store, tiers: tiers, tierSocket: broker?.socketPath, settings: settings,
                                     prefetch: prefetch, cluster: cluster,
                                     inspector: ProcCallerInspector(mountPoint: absolute(mountpoint)), logger: logger)

// MARK: Mount and serve

let session: FuseSession
do {
    session = try FuseSession(filesystem: filesystem, mountpoint: mountpoint, options: fuseOptions, debug: options.debug)
} catch {
    tiers?.close()
    runtime.remove()
    try? store.close()
    fail("cannot mount \(mountpoint): \(error)", code: 2)
}
say("twfs: mounted at \(mountpoint)")
// Bound before daemonizing so a taken port fails the mount command; served after (threads do not fork).
var metricsServer: MetricsServer? = nil
if let address = options.metrics {
    do {
        let fs = filesystem
        metricsServer = try MetricsServer(address: address) { Array(PrometheusText.render(fs.status(for: nil)).utf8) }
        say("twfs: metrics at http://\(metricsServer!.host):\(metricsServer!.port)/metrics")
        if metricsServer!.isPublic {
            logger.warning("twfs: the metrics endpoint listens on \(metricsServer!.host), reachable from other machines; give --metrics 127.0.0.1:PORT to keep it local")
        }
    } catch {
        session.close()
        tiers?.close()
        runtime.remove()
        try? store.close()
        fail("\(error)", code: 2)
    }
}
session.daemonize(foreground: options.foreground || options.debug)
runtime.recordPid()
store.startBackgroundWork()
filesystem.prefetcher?.start()
cluster?.start()
broker?.start()
if let cluster { say("twfs: sharing blocks through \(cluster.tier.location) (\(clusterConf!)), default policy \(options.share.rawValue)") }
metricsServer?.start()
let rc = session.run(threads: options.threads)
// libfuse's loop returns the number of the signal that stopped it (SIGINT, SIGTERM, SIGHUP): a clean stop.
let cleanExit = rc == 0 || rc == SIGINT || rc == SIGTERM || rc == SIGHUP
session.close()
metricsServer?.stop()
broker?.stop()
filesystem.stop()
cluster?.stop()
tiers?.close()
runtime.remove()
do {
    try store.close()
} catch {
    fail("unmounted, but flushing the store failed: \(error)", code: 3)
}
if let why = store.indexSnapshotFailure {
    logger.warning("twfs: no index snapshot written (\(why)): the next start rebuilds the index from the segment summaries")
}
exit(cleanExit ? 0 : 1)
