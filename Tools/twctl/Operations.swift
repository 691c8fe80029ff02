import ArgumentParser
import BlockStore
import CommandLineTypes
import ControlPlane
import Foundation
import Platform

/// Sends one request to a mounted warehouse's daemon through `MOUNT/.tw/ctl` (write it, read the JSON
/// answer on the same descriptor; docs/operations.md) and returns the answer; an `error` answer throws.
func control(_ mount: String, _ request: ControlRequest) throws -> ControlResponse {
    let path = mount + "/.tw/ctl"
    let fd = open(path, O_RDWR | O_CLOEXEC)
    guard fd >= 0 else {
        let e = errno
        if e == EACCES || e == EPERM { throw failure("\(path): permission denied") }
        throw failure("\(mount) is not a mounted warehouse (cannot open \(path): \(String(cString: strerror(e))))")
    }
    defer { close(fd) }
    let line = ControlJSON.encode(request)
    guard line.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == line.count else {
        throw failure("cannot send the request to \(mount): \(String(cString: strerror(errno)))")
    }
    var answer: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(answer.count)) }
        if n < 0 { throw failure("reading the answer from \(path): \(String(cString: strerror(errno)))") }
        if n == 0 { break }
        answer += chunk[0..<n]
    }
    let response: ControlResponse
    do { response = try ControlJSON.decode(ControlResponse.self, from: answer) } catch {
        throw failure("\(mount): the daemon's answer is not one this twctl reads (an older twfs?): \(error)")
    }
    if let message = response.error { throw failure(message) }
    return response
}

/// Starts a job (evict, cluster-gc) and waits for it to finish.
func runJob(_ mount: String, _ request: ControlRequest) throws -> JobStatus {
    guard var job = try control(mount, request).job else { throw failure("\(mount): the daemon started no job") }
    while job.running {
        usleep(100_000)
        var follow = ControlRequest(command: .job)
        follow.job = job.id
        guard let next = try control(mount, follow).job else { throw failure("\(mount): job \(job.id) is gone") }
        job = next
    }
    if let error = job.error { throw failure("\(request.command.rawValue) failed: \(error)") }
    return job
}

/// Online compaction: starts a run through the daemon and follows it to the end.
func compactOnline(mount: String, threshold: Double, maxBytes: UInt64?, rate: UInt64, dryRun: Bool, json: Bool) throws {
    if dryRun {
        var request = ControlRequest(command: .compactCandidates)
        request.threshold = threshold
        let candidates = try control(mount, request).candidates ?? []
        if json {
            printJSON(["candidates": candidates.map { ["segment": $0.segment, "bytes": $0.bytes, "dead_ratio": $0.deadRatio] }])
        } else {
            for c in candidates { print("segment \(c.segment): \(bytes(c.bytes)), \(Int(c.deadRatio * 100))% dead") }
            print("\(candidates.count) segments would be compacted")
        }
        return
    }
    var request = ControlRequest(command: .compact)
    request.threshold = threshold
    request.rate = rate
    request.maxBytes = maxBytes
    let started = try control(mount, request)
    if started.started == false && !json { print("a compaction is already running; following it") }
    let tty = isatty(1) != 0 && !json
    var lastLine = ""
    var status = CompactionStatus()
    while true {
        status = try control(mount, ControlRequest(command: .compactStatus)).compaction ?? CompactionStatus()
        let total = max(1, status.candidates)
        let done = status.segmentsCompacted
        if tty {
            FileHandle.standardOutput.write(Data("\r\(progressBar(done, total)) \(done)/\(total) segments, \(bytes(status.bytesReclaimed)) reclaimed".utf8))
        } else if !json {
            let line = "compacted \(done)/\(total) segments, \(bytes(status.bytesReclaimed)) reclaimed"
            if line != lastLine { print(line) }
            lastLine = line
        }
        if !status.running { break }
        usleep(200_000)
    }
    if tty { print("") }
    if let error = status.error { throw failure("compaction stopped: \(error)") }
    if json {
        printJSON(["segments_compacted": status.segmentsCompacted, "blocks_moved": status.blocksMoved,
                   "bytes_moved": status.bytesMoved, "bytes_reclaimed": status.bytesReclaimed, "seconds": status.seconds])
    } else {
        print("done: \(status.segmentsCompacted) segments compacted, \(status.blocksMoved) blocks moved, "
              + "\(bytes(status.bytesReclaimed)) reclaimed in \(String(format: "%.1f", status.seconds)) s")
    }
}

struct Evict: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a namespace's blocks (all, or those older than a duration).")

    @Argument(help: "The mount point.") var mount: String
    @Argument(help: "The namespace.") var namespace: String
    @Option(help: "Only blocks committed longer ago than this (e.g. 90s, 30m, 12h, 7d).") var olderThan: TimeSpan?
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        if let o = olderThan, o.seconds > 1 << 40 { throw ValidationError("--older-than \(o) is longer than anything a store holds") }
    }

    func run() throws {
        var request = ControlRequest(command: .evict, namespace: namespace)
        request.olderThan = olderThan?.seconds
        let job = try runJob(mount, request)
        if json {
            printJSON(["namespace": namespace, "removed_blocks": job.removedBlocks ?? 0, "removed_bytes": job.removedBytes ?? 0])
        } else {
            print("evicted \(job.removedBlocks ?? 0) blocks (\(bytes(job.removedBytes ?? 0))) from \(namespace)")
        }
    }
}

struct Prefetch: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ask the daemon to load blocks into the DRAM tier before they are read.")

    @Argument(help: "The mount point.") var mount: String
    @Argument(help: "The namespace.") var namespace: String
    @Argument(help: "Block names: canonical hashes, or paths inside the namespace.") var names: [String]
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        if names.isEmpty { throw ValidationError("give at least one block name") }
        if names.contains(where: { $0.contains("\n") || $0.contains("\t") }) { throw ValidationError("a block name may not hold a tab or newline") }
    }

    func run() throws {
        let lines = names.map { "\(namespace)\t\($0)\n" }.joined()
        guard writeFile(mount + "/.tw/prefetch", Array(lines.utf8)) else {
            throw failure("cannot send hints to \(mount)/.tw/prefetch: \(String(cString: strerror(errno))) (is it a mounted warehouse with a DRAM tier?)")
        }
        if json { printJSON(["queued": names.count]) } else { print("queued \(names.count) hints") }
    }
}

struct Namespace: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ns", abstract: "Create, list and set namespaces and their policies.",
                                                    subcommands: [Create.self, List.self, Set.self])

    /// Policy options shared by create and set.
    struct Policy: ParsableArguments {
        @Option(help: "Stored bytes the namespace may hold (e.g. 500G), or none.") var quota: String?
        @Option(help: "Time to live of its blocks (e.g. 30m, 24h, 7d), or none.") var ttl: String?
        @Flag(inversion: .prefixedNo, help: "Keep its blocks through eviction while within the quota.") var pin: Bool?
        @Option(help: "Compression of blocks written from now on: off, lz4 or auto.") var compression: String?
        @Option(help: "Sharing through the cluster tier (mounts with --cluster): off, async, sync, or default (twfs --share).")
        var share: String?

        func request(_ namespace: String) throws -> ControlRequest? {
            var r = ControlRequest(command: .namespaceSet, namespace: namespace)
            var any = false
            if let quota {
                if quota == "none" { r.quota = 0 } else {
                    guard let v = ByteCount(parsing: quota) else { throw failure("--quota: '\(quota)' is not a size (500G) or none") }
                    r.quota = v.bytes
                }
                any = true
            }
            if let ttl {
                if ttl == "none" { r.ttl = 0 } else {
                    guard let v = TimeSpan(parsing: ttl), v.seconds > 0 else { throw failure("--ttl: '\(ttl)' is not a duration (30m, 24h, 7d) or none") }
                    guard v.seconds <= NamespaceInfo.maxTTLSeconds else { throw failure("--ttl: \(ttl) is longer than 100 years") }
                    r.ttl = v.seconds
                }
                any = true
            }
            if let pin {
                r.pinned = pin
                any = true
            }
            if let compression {
                guard ["off", "lz4", "auto"].contains(compression) else { throw failure("--compression: '\(compression)' is not off, lz4 or auto") }
                r.compression = compression
                any = true
            }
            if let share {
                guard ["off", "async", "sync", "default"].contains(share) else { throw failure("--share: '\(share)' is not off, async, sync or default") }
                r.share = share
                any = true
            }
            return any ? r : nil
        }
    }

    static func show(_ ns: NamespaceReport) -> String {
        "\(ns.name)  owner \(ns.owner):\(ns.group) mode \(ns.mode)  "
            + "\(ns.blocks) blocks, \(bytes(ns.logicalBytes)) (\(bytes(ns.storedBytes)) stored)  "
            + "quota \(ns.quotaBytes > 0 ? bytes(ns.quotaBytes) : "none")  ttl \(ns.ttlSeconds > 0 ? "\(TimeSpan(seconds: ns.ttlSeconds))" : "none")  "
            + "\(ns.pinned ? "pinned" : "not pinned")  compression \(ns.compression)  "
            + "share \(ns.share)\(ns.shareSet == nil ? " (default)" : "")"
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a namespace (a directory of the mount) with a policy.")
        @Argument(help: "The mount point.") var mount: String
        @Argument(help: "The namespace: [A-Za-z0-9._@+-], 1 to 128, not starting with '.'.") var namespace: String
        @Option(help: "Directory mode (octal).") var mode = "0755"
        @OptionGroup var policy: Policy
        @Flag(help: "Print one JSON object.") var json = false

        func run() throws {
            guard let m = UInt32(mode, radix: 8), m <= 0o7777 else { throw failure("--mode: '\(mode)' is not an octal mode") }
            guard readStatus(mount) != nil else { throw failure("\(mount) is not a mounted warehouse") }
            let request = try policy.request(namespace)   // bad values are refused before anything is created
            if mkdir(mount + "/" + namespace, mode_t(m)) != 0 {
                throw failure("cannot create \(mount)/\(namespace): \(String(cString: strerror(errno)))")
            }
            // mkdir applies the umask; the namespace gets the mode asked for.
            _ = chmod(mount + "/" + namespace, mode_t(m))
            let answer = try request.map { try control(mount, $0) }
            let listed = try control(mount, ControlRequest(command: .namespaceList)).namespaces
            let info = answer?.namespace ?? listed?.first { $0.name == namespace } ?? NamespaceReport()
            if json { printJSON(info) } else { print("created " + Namespace.show(info)) }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List namespaces with their use and policy.")
        @Argument(help: "The mount point.") var mount: String
        @Flag(help: "Print one JSON object.") var json = false

        func run() throws {
            let answer = try control(mount, ControlRequest(command: .namespaceList))
            if json {
                printJSON(answer)
            } else {
                for ns in answer.namespaces ?? [] { print(Namespace.show(ns)) }
            }
        }
    }

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a namespace's quota, time to live, pinning, compression or sharing.")
        @Argument(help: "The mount point.") var mount: String
        @Argument(help: "The namespace.") var namespace: String
        @OptionGroup var policy: Policy
        @Flag(help: "Print one JSON object.") var json = false

        func run() throws {
            guard let request = try policy.request(namespace) else { throw failure("nothing to set: give --quota, --ttl, --pin/--no-pin, --compression or --share") }
            let info = try control(mount, request).namespace ?? NamespaceReport()
            if json { printJSON(info) } else { print(Namespace.show(info)) }
        }
    }
}
