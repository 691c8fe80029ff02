import Testing
import WarehouseCore
import Platform
@testable import BlockStore

@Suite struct VerifierTests {
    /// A write that failed (no space) leaves zero pages at the end of the active segment: a hole, which
    /// `twctl verify` must not report as damage; a non-zero torn tail it must.
    @Test func zeroPagesAfterTheLastRecordAreNotDamageButATornTailIs() throws {
        let device = MemoryStorageDevice()
        let store = try makeStore(device, sync: .always)
        try ensureNamespace(store)
        _ = try store.put("m", "a", pattern(1, count: 10_000))
        try store.close()
        let name = try #require(segmentNames(device).last)
        let file = try device.open(name, create: false)
        let end = try file.length()
        let zeros = [UInt8](repeating: 0, count: 3 * 4096)
        try zeros.withUnsafeBytes { try file.write([$0], at: end) }
        #expect(try StoreVerifier.verify(device: device).findings.isEmpty)
        let torn = pattern(7, count: 4096 + 100)
        try torn.withUnsafeBytes { try file.write([$0], at: end + UInt64(zeros.count)) }
        let findings = try StoreVerifier.verify(device: device).findings
        #expect(findings.count == 1)
        #expect(findings.first?.reason == "torn or damaged tail")
    }
}
