import BlockStore
import ClusterTier
import Platform
import Synchronization
import Testing
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// A pool whose writes, while `down`, take `delay` and then fail as unavailable: an OSD that stopped
/// while the monitor still answers (the connection stays up). Up, it keeps what it is given.
final class StoppablePool: RemoteTier {
    let location = "test:pool"
    let delayNanoseconds: UInt64
    let down = Atomic<Bool>(true)
    let stored = Mutex<Set<String>>([])

    init(delaySeconds: Double) { delayNanoseconds = UInt64(delaySeconds * 1e9) }

    var isConnected: Bool { true }
    func connect() throws(RemoteTierError) {}
    func disconnect() {}

    func publish(name: String, object: UnsafeRawBufferPointer) throws(RemoteTierError) {
        if down.load(ordering: .relaxed) {
            var t = timespec(tv_sec: Int(delayNanoseconds / 1_000_000_000), tv_nsec: Int(delayNanoseconds % 1_000_000_000))
            nanosleep(&t, nil)
            throw .unavailable("timed out")
        }
        _ = stored.withLock { $0.insert(name) }
    }

    func fetch(name: String) throws(RemoteTierError) -> RemoteObject? { nil }
    func touch(name: String, seconds: UInt64) throws(RemoteTierError) {}
    func inventory() throws(RemoteTierError) -> [RemoteObjectInfo] { [] }
    func remove(name: String) throws(RemoteTierError) {}
}

/// `share=sync` while the cluster is away (docs/cluster-tier.md "Write path").
@Suite struct SyncPublishTests {
    @Test func syncCommitsQueueAtOnceWhilePublishingFailsAndPublishInlineOnceItWorksAgain() throws {
        let store = try BlockStore(device: MemoryStorageDevice(), configuration: StoreConfiguration(
            capacity: 1 << 30, segmentSize: 1 << 20, sync: .none, backgroundCompaction: false))
        defer { try? store.close() }
        _ = try store.createNamespace("s", owner: 0, group: 0, mode: 0o755, share: .sync)
        let pool = StoppablePool(delaySeconds: 0.3)
        var settings = RemoteSettings()
        settings.backoffSeconds = 0.05      // shorter than the pauses below: only the failure flag defers
        let cluster = ClusterTier(tier: pool, store: store, dram: nil, settings: settings)
        defer { cluster.stop() }

        func commit(_ i: Int) throws -> Double {
            let data = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 4096)
            _ = try data.withUnsafeBytes { try store.put(namespace: "s", key: "b\(i)", payload: $0) }
            let started = monotonicNanoseconds()
            data.withUnsafeBytes { cluster.committed(namespace: "s", key: "b\(i)", payload: $0, metadata: BlockMetadata(), checksum: nil) }
            return Double(monotonicNanoseconds() - started) / 1e9
        }
        func pause() { usleep(150_000) }    // past the back-off window

        // The first commit after the cluster went away finds it out: it waits the timeout.
        #expect(try commit(0) >= 0.25)
        pause()
        for i in 1...4 {
            let waited = try commit(i)
            #expect(waited < 0.1, "commit \(i) waited \(waited) s for a cluster known to be away")
        }
        var r = cluster.report()
        #expect(r.syncDeferred == 4 && r.syncPublished == 0 && r.publishFailures == 1 && r.queueDepth == 5, "\(r)")

        // Back: the publisher gets the queued blocks through, and sync commits publish inline again.
        pool.down.store(false, ordering: .relaxed)
        cluster.start()
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while cluster.report().queueDepth > 0 && monotonicNanoseconds() < deadline { usleep(10_000) }
        pause()
        #expect(try commit(5) < 0.1)
        r = cluster.report()
        #expect(r.syncPublished == 1 && r.syncDeferred == 4 && r.queueDepth == 0, "\(r)")
        #expect(pool.stored.withLock { $0.count } == 6)
    }
}
