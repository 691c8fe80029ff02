@testable import BlockStore
import Platform
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// Deterministic bytes for block `seed` of `count` bytes (cheap to regenerate for checking).
func pattern(_ seed: Int, count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    var x = UInt64(truncatingIfNeeded: seed) &* 0x9E37_79B9_7F4A_7C15 | 1
    for i in 0..<count {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        out[i] = UInt8(truncatingIfNeeded: x)
    }
    return out
}

func makeStore(_ device: any StorageDevice, capacity: UInt64 = 1 << 30, segmentSize: UInt64 = 1 << 20,
               sync: SyncPolicy = .always, compaction: Bool = false) throws -> BlockStore {
    try BlockStore(device: device, configuration: StoreConfiguration(
        capacity: capacity, segmentSize: segmentSize, sync: sync, backgroundCompaction: compaction))
}

func ensureNamespace(_ store: BlockStore, _ name: String = "m", compression: CompressionPolicy = .off) throws {
    if store.namespace(named: name) == nil {
        _ = try store.createNamespace(name, owner: 0, group: 0, mode: 0o755, compression: compression)
    }
}

extension BlockStore {
    func put(_ ns: String, _ key: String, _ bytes: [UInt8], metadata: BlockMetadata = BlockMetadata()) throws -> PutOutcome {
        try bytes.withUnsafeBytes { try put(namespace: ns, key: key, payload: $0, metadata: metadata) }
    }

    func get(_ ns: String, _ key: String) throws -> [UInt8] {
        try read(namespace: ns, key: key).array
    }
}

/// The one segment data file of a device with a single segment that holds records.
func segmentNames(_ device: MemoryStorageDevice) -> [String] {
    (try? device.fileNames())?.filter { $0.hasSuffix(SegmentFormat.dataSuffix) }.sorted() ?? []
}

/// The errno of the `StoreError` that `body` throws, or nil when it throws nothing (or something else):
/// tests pin the exact failure, not "some error".
func storeErrno(_ body: () throws -> Void) -> Int32? {
    do {
        try body()
        return nil
    } catch let e as StoreError {
        return e.errnoCode
    } catch {
        return nil
    }
}

/// A fresh directory of this test (mode 0700), removed with `removeScratch`.
func scratchDirectory(_ label: String) -> String {
    let dir = "/tmp/tw-unit-\(getpid())-\(label)-\(UInt32.random(in: 0...UInt32.max))"
    _ = mkdir(dir, 0o700)
    return dir
}

func removeScratch(_ dir: String) {
    for name in (try? FileSystem.listDirectory(dir)) ?? [] { _ = unlink(dir + "/" + name) }
    _ = rmdir(dir)
}
