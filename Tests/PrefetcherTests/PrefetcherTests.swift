import BlockStore
import DRAMTier
import Platform
import Prefetcher
import Testing
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

@Suite struct PrefetcherTests {
    /// A speculative load is a guess that the block is read soon. When its block is opened before a worker
    /// takes the load, the reader reads it itself: the load is dropped and counted late, not run (it would
    /// read the block from NVMe a second time for nobody). A guess whose block was not opened is loaded.
    @Test func aGuessWhoseBlockWasOpenedMeanwhileIsDroppedAndTheOthersAreLoaded() throws {
        let scratch = "/tmp/tw-unit-\(getpid())-prefetch-\(UInt32.random(in: 0...UInt32.max))"
        _ = mkdir(scratch, 0o700)
        defer { _ = rmdir(scratch) }
        let store = try BlockStore(device: MemoryStorageDevice(), configuration: StoreConfiguration(
            capacity: 1 << 30, segmentSize: 1 << 20, sync: .none, backgroundCompaction: false))
        let ns = try store.createNamespace("ns", owner: 0, group: 0, mode: 0o755)
        let size = 16 << 20
        let tiers = DRAMTiers(budget: size, storage: TierStorage.prepare(directory: "/dev/shm", privateDirectory: scratch, size: size),
                              namePrefix: "tw-unit-\(getpid())")
        defer { tiers.close() }
        try tiers.namespaceChanged(id: ns.id, name: "ns", owner: 0, group: 0, mode: 0o755)
        let names = ["0000000000000001", "0000000000000002", "0000000000000003"]
        for (i, name) in names.enumerated() {
            let bytes = [UInt8](repeating: UInt8(i + 1), count: 64 << 10)
            _ = try bytes.withUnsafeBytes { try store.put(namespace: "ns", key: name, payload: $0, metadata: BlockMetadata()) }
        }
        let prefetcher = Prefetcher(store: store, tier: tiers, settings: PrefetchSettings())
        // Chain links: the first block is followed by the second, which is followed by the third.
        prefetcher.noteCommit(namespace: "ns", namespaceID: ns.id, name: names[1], parent: names[0])
        prefetcher.noteCommit(namespace: "ns", namespaceID: ns.id, name: names[2], parent: names[1])
        // A reader opens the first block (the second and third are queued), then the second before any
        // worker runs; that open queues nothing new (the third is queued already).
        prefetcher.noteRead(namespace: "ns", namespaceID: ns.id, name: names[0], process: 4242)
        prefetcher.noteRead(namespace: "ns", namespaceID: ns.id, name: names[1], process: 4242, speculate: false)
        prefetcher.start()
        defer { prefetcher.stop() }
        let third = BlockKey(namespace: "ns", key: names[2])
        let deadline = monotonicNanoseconds() + 10_000_000_000
        // Workers take the newest guess first: the third block's load may finish before the second's
        // guess is taken, so wait for both outcomes.
        while !(tiers.contains(third, namespaceID: ns.id) && prefetcher.statistics().late > 0) && monotonicNanoseconds() < deadline {
            usleep(10_000)
        }
        usleep(50_000)  // a wrong load of the second block, had one started, would have finished by now
        #expect(tiers.contains(third, namespaceID: ns.id))
        #expect(!tiers.contains(BlockKey(namespace: "ns", key: names[1]), namespaceID: ns.id))
        let report = prefetcher.statistics()
        #expect(report.late == 1)
        #expect(report.loadedChain == 1)
    }
}
