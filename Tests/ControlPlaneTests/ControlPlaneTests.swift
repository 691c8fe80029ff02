import ControlPlane
import Foundation
import MetricsExporter
import Platform
import Testing
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

@Suite struct ControlPlaneTests {
    @Test func theStatusSurvivesItsJSONWithTheKeysToolsRead() throws {
        var s = StatusReport()
        s.blocks = 7
        s.capacityBytes = 1 << 30
        s.namespaces = ["llama"]
        var ns = NamespaceReport()
        ns.name = "llama"
        ns.quotaBytes = 5
        s.namespaceUsage["llama"] = ns
        s.prefetch.enabled = true
        s.prefetch.successorLinks = 3
        s.remote.publishLagMs = Percentiles(p50: 1, p99: 2, max: 3)
        s.puts = 11
        s.reinsertedBlocks = 2
        let bytes = ControlJSON.encode(s)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        #expect(object["capacity_bytes"] as? Int == 1 << 30)
        // The store's counters sit at the top level beside the figures, as they always did.
        #expect(object["puts"] as? Int == 11)
        #expect(object["reinserted_blocks"] as? Int == 2)
        #expect(object["base"] == nil && object["extra"] == nil)
        #expect((object["namespace_usage"] as? [String: Any])?["llama"] != nil)
        #expect((object["prefetch"] as? [String: Any])?["successor_links"] as? Int == 3)
        #expect(((object["namespace_usage"] as? [String: [String: Any]])?["llama"]?["share_set"]) is NSNull)
        #expect(try ControlJSON.decode(StatusReport.self, from: bytes) == s)
    }

    @Test func aJobAlwaysCarriesItsErrorKeyAndReadsBackWithoutIt() throws {
        var job = JobStatus(id: 3, command: "evict", running: false)
        job.removedBlocks = 4
        let object = try #require(try JSONSerialization.jsonObject(with: Data(ControlJSON.encode(job))) as? [String: Any])
        #expect(object["error"] is NSNull)
        #expect(object["objects"] == nil)
        job.error = "no room"
        #expect(try ControlJSON.decode(JobStatus.self, from: ControlJSON.encode(job)) == job)
        let withoutError = Array(#"{"id": 1, "command": "evict", "running": true, "seconds": 0}"#.utf8)
        #expect(try ControlJSON.decode(JobStatus.self, from: withoutError).error == nil)
    }

    @Test func theDRAMTiersFiguresAndSettingsShareOneObject() throws {
        var s = StatusReport()
        s.dramTier.enabled = true
        s.dramTier.memory = "tmpfs huge=always"
        s.dramTier.mountHits = 9
        s.dramTier.mountMisses = 1
        s.dramTier.mountHitRatio = 0.9
        let bytes = ControlJSON.encode(s)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        let tier = try #require(object["dram_tier"] as? [String: Any])
        #expect(tier["enabled"] as? Bool == true && tier["mount_hits"] as? Int == 9 && tier["mount_misses"] as? Int == 1)
        #expect(tier["mount_hit_ratio"] as? Double == 0.9 && tier["policy"] as? String == "S3-FIFO")
        #expect(tier["base"] == nil && tier["extra"] == nil)
        #expect(try ControlJSON.decode(StatusReport.self, from: bytes) == s)
    }

    @Test func aCollectionsFiguresStandBesideTheJobsKeys() throws {
        var job = JobStatus(id: 5, command: JobStatus.clusterGCCommand, running: false)
        var g = GarbageReport()
        g.location = "ceph:pool"
        g.objects = 3
        g.removedObjects = 1
        g.removedBytes = 4096
        g.bytesAfter = 8192
        job.collection = g
        let bytes = ControlJSON.encode(job)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        #expect(object["removed_objects"] as? Int == 1 && object["removed_bytes"] as? Int == 4096 && object["bytes_after"] as? Int == 8192)
        #expect(object["collection"] == nil && object["error"] is NSNull)
        #expect(try ControlJSON.decode(JobStatus.self, from: bytes) == job)
        // While it runs there is nothing to show yet.
        let running = JobStatus(id: 6, command: JobStatus.clusterGCCommand, running: true)
        #expect(try ControlJSON.decode(JobStatus.self, from: ControlJSON.encode(running)).collection == nil)
    }

    @Test func requestsParseFromJSONAndFromCommandLines() throws {
        let line = try ControlRequest.parse(Array("ns-set ns=llama quota=1024 ttl=60 pinned=1 compression=lz4".utf8))
        #expect(line.command == .namespaceSet && line.namespace == "llama" && line.quota == 1024 && line.ttl == 60 && line.pinned == true)
        let json = try ControlRequest.parse(ControlJSON.encode(line))
        #expect(json == line)
        #expect(try ControlRequest.parse(Array(#"{"command":"compact","threshold":0.5}"#.utf8)).threshold == 0.5)
    }

    @Test func badRequestsAreRefusedWithAMessage() {
        let bad = ["", "frobnicate", "evict", "evict ns=x older_than=-1", "ns-set ns=x ttl=18446744073709551615",
                   "ns-set ns=x quota=1e9", "compact threshold=2", "ns-set ns=x compression=zstd", "job job=x",
                   "cluster-gc", "ns-set ns", #"{"command":"nope"}"#, #"{"command":"evict","ns":5}"#,
                   String(repeating: "a", count: ControlRequest.maxLength + 1)]
        for text in bad {
            do {
                _ = try ControlRequest.parse(Array(text.utf8))
                Issue.record("'\(text.prefix(60))' was accepted")
            } catch {
                #expect(!error.message.isEmpty)
            }
        }
    }

    @Test func engineReportsAreBounded() {
        #expect(EngineReport.parse(Array(#"{"engine":"vllm","instance":"a","counters":{"saved":3}}"#.utf8))?.counters["saved"] == 3)
        #expect(EngineReport.parse(Array(#"{"engine":"","instance":"a","counters":{}}"#.utf8)) == nil)
        let many = (0..<100).map { "\"c\($0)\":1" }.joined(separator: ",")
        #expect(EngineReport.parse(Array(#"{"engine":"e","instance":"a","counters":{\#(many)}}"#.utf8)) == nil)
    }

    @Test func prometheusTextComesFromTheSameValues() {
        var s = StatusReport()
        s.blocks = 12
        s.operations.counts = ["read": 5]
        var h = LatencyHistogram()
        h.bounds = [0.001, 0.01]
        h.cumulative = [2, 3]
        h.count = 4
        h.sumSeconds = 0.5
        s.operations.readLatency = ["dram": h]
        s.hitRatios.dram = 0.25
        let text = PrometheusText.render(s)
        #expect(text.contains("tw_store_blocks 12\n"))
        #expect(text.contains("tw_operations_total{op=\"read\"} 5\n"))
        #expect(text.contains("tw_read_latency_seconds_bucket{tier=\"dram\",le=\"0.001\"} 2\n"))
        #expect(text.contains("tw_read_latency_seconds_bucket{tier=\"dram\",le=\"+Inf\"} 4\n"))
        #expect(text.contains("tw_hit_ratio{tier=\"dram\"} 0.25\n"))
    }

    @Test func aSilentClientDoesNotHoldTheMetricsEndpoint() throws {
        let server = try MetricsServer(address: "127.0.0.1:0") { Array("tw_up 1\n".utf8) }
        #expect(!server.isPublic)
        server.start()
        defer { server.stop() }
        // Several clients that connect and send nothing.
        let silent = (0..<6).map { _ in connectTCP(port: server.port) }
        defer { silent.forEach { close($0) } }
        let started = monotonicNanoseconds()
        let answer = httpGet(port: server.port, path: "/metrics")
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        #expect(answer.hasPrefix("HTTP/1.1 200"))
        #expect(answer.hasSuffix("tw_up 1\n"))
        #expect(seconds < Double(MetricsServer.deadlineSeconds) + 2.5, "a scrape waited \(seconds) s behind silent clients")
        #expect(httpGet(port: server.port, path: "/other").hasPrefix("HTTP/1.1 404"))
    }

    @Test func anAddressWithoutAHostListensOnLoopback() throws {
        let server = try MetricsServer(address: ":0") { [] }
        #expect(server.host == "127.0.0.1")
        #expect(throws: MetricsAddressError.self) { _ = try MetricsServer(address: "nonsense") { [] } }
    }
}

func connectTCP(port: UInt16) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    sin.sin_port = port.bigEndian
    _ = inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
    _ = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    return fd
}

func httpGet(port: UInt16, path: String) -> String {
    let fd = connectTCP(port: port)
    defer { close(fd) }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        out += chunk[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}
