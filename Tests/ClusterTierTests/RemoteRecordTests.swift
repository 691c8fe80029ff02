import Testing
import BlockStore
@testable import ClusterTier
import WarehouseCore

/// The object format of the shared tier (`RemoteRecord`, docs/cluster-tier.md): one test per way an
/// object can be wrong, each refused before a byte reaches the caller.
@Suite struct RemoteRecordTests {
    let payload: [UInt8] = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
    let metadata = BlockMetadata(parent: "aa11bb22cc33dd44", tokens: "1,2,3")

    func object() -> [UInt8] {
        payload.withUnsafeBytes {
            RemoteRecord.encode(namespace: "llama", key: "0a1b2c3d4e5f6071", payload: $0, metadata: metadata,
                                commitNanoseconds: 1_700_000_000_000_000_000).withBytes { Array($0) }
        }
    }

    func verify(_ bytes: [UInt8], key: String = "0a1b2c3d4e5f6071") throws -> ([UInt8], RecordHeader) {
        try bytes.withUnsafeBytes { raw in
            try RemoteRecord.withVerifiedPayload(raw, namespace: "llama", key: key) { (Array($1), $0) }
        }
    }

    @Test func objectNameIsPrefixAndKeyHashInHex() {
        let key = BlockKey(namespace: "llama", key: "0a1b2c3d4e5f6071")
        let name = RemoteRecord.objectName(namespace: "llama", key: "0a1b2c3d4e5f6071")
        #expect(name.count == 4 + 32)
        #expect(name.hasPrefix("twb."))
        #expect(UInt64(name.dropFirst(4).prefix(16), radix: 16) == key.high)
        #expect(UInt64(name.suffix(16), radix: 16) == key.low)
    }

    @Test func objectIsHeaderAreaThenPayloadAndRoundTrips() throws {
        let bytes = object()
        #expect(bytes.count == 4096 + payload.count)
        let (got, header) = try verify(bytes)
        #expect(got == payload)
        #expect(header.metadata == metadata)
        #expect(header.commitTimeNanoseconds == 1_700_000_000_000_000_000)
    }

    @Test func flippedPayloadByteIsRefused() {
        var bytes = object()
        bytes[4096 + 1234] ^= 1
        #expect(throws: StoreError.self) { try verify(bytes) }
    }

    @Test func flippedHeaderByteIsRefused() {
        var bytes = object()
        bytes[16] ^= 1
        #expect(throws: StoreError.self) { try verify(bytes) }
    }

    @Test func truncatedObjectIsRefused() {
        var bytes = object()
        bytes.removeLast()
        #expect(throws: StoreError.self) { try verify(bytes) }
    }

    @Test func objectOfAnotherNameIsRefused() {
        #expect(throws: StoreError.self) { try verify(object(), key: "0a1b2c3d4e5f6072") }
    }

    @Test func namespaceDescriptorRoundTripsWithoutNodeLocalPolicy() throws {
        let ns = NamespaceInfo(id: 7, name: "llama-70b.tp8", owner: 1000, group: 100, mode: 0o750, compression: .lz4,
                               createdSeconds: 5, quotaBytes: 1 << 30, ttlSeconds: 86400, pinned: true, share: .sync)
        let bytes = RemoteNamespace.encode(ns)
        let back = try #require(bytes.withUnsafeBytes { RemoteNamespace.decode($0, expecting: "llama-70b.tp8") })
        #expect(back.owner == 1000 && back.group == 100 && back.mode == 0o750 && back.compression == .lz4)
        #expect(back.ttlSeconds == 86400 && back.share == .sync)
        // Quota and pinning size one node's disks: each node keeps its own.
        #expect(back.quotaBytes == 0 && !back.pinned)
        var plain = ns
        plain.share = nil
        let d = try #require(RemoteNamespace.encode(plain).withUnsafeBytes { RemoteNamespace.decode($0, expecting: ns.name) })
        #expect(d.share == nil)
        #expect(RemoteNamespace.objectName("kv") == "twn.kv")
    }

    @Test func damagedOrMisnamedNamespaceDescriptorIsRefused() {
        let ns = NamespaceInfo(id: 1, name: "kv", owner: 0, group: 0, mode: 0o755, createdSeconds: 0)
        let bytes = RemoteNamespace.encode(ns)
        #expect(bytes.withUnsafeBytes { RemoteNamespace.decode($0, expecting: "other") } == nil)
        for i in 0..<(bytes.count - 1) {
            var damaged = bytes
            damaged[i] ^= 0x01
            #expect(damaged.withUnsafeBytes { RemoteNamespace.decode($0, expecting: "kv") } == nil, "flip at \(i)")
        }
        #expect(Array(bytes.dropLast()).withUnsafeBytes { RemoteNamespace.decode($0, expecting: "kv") } == nil)
    }
}
