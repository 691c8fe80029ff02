import ArgumentParser
import BlockStore
import Foundation
import Platform

/// Sends one command to a mounted warehouse's daemon through `MOUNT/.tw/ctl` (write it, read the JSON
/// answer on the same descriptor; docs/operations.md) and returns the answer; an `error` answer throws.
func control(_ mount: String, _ command: String) throws -> [String: Any] {
    let path = mount + "/.tw/ctl"
    let fd = open(path, O_RDWR | O_CLOEXEC)
    guard fd >= 0 else {
        let e = errno
        if e == EACCES || e == EPERM { throw failure("\(path): permission denied (the control file is root's; run twctl as root)") }
        throw failure("\(mount) is not a mounted warehouse (cannot open \(path): \(String(cString: strerror(e))))")
    }
    defer { close(fd) }
    let line = Array((command + "\n").utf8)
    guard line.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == line.count else {
        throw failure("cannot send '\(command)' to \(mount): \(String(cString: strerror(errno)))")
    }
    var answer: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(answer.count)) }
        if n < 0 { throw failure("reading the answer from \(path): \(String(cString: strerror(errno)))") }
        if n == 0 { break }
        answer += chunk[0..<n]
    }
    guard let object = try? JSONSerialization.jsonObject(with: Data(answer)) as? [String: Any] else {
        throw failure("\(mount): the daemon's answer is not JSON (an older twfs?)")
    }
    if let message = object["error"] as? String { throw failure(message) }
    return object
}

/// "90", "30s", "10m", "2h", "7d" -> seconds.
func parseDuration(_ text: String) -> UInt64? {
    let units: [Character: UInt64] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800]
    if let n = UInt64(text) { return n }
    guard let unit = text.last.flatMap({ units[$0] }), let n = Double(text.dropLast()), n >= 0 else { return nil }
    return UInt64(n * Double(unit))
}

func number(_ object: [String: Any], _ key: String) -> UInt64 { (object[key] as? NSNumber)?.uint64Value ?? 0 }

/// Online compaction: starts a run through the daemon and follows it to the end.
func compactOnline(mount: String, threshold: Double, maxBytes: UInt64?, rate: UInt64, dryRun: Bool, json: Bool) throws {
    if dryRun {
        let answer = try control(mount, "compact-candidates threshold=\(threshold)")
        let candidates = answer["candidates"] as? [[String: Any]] ?? []
        if json {
            printJSON(answer)
        } else {
            for c in candidates {
                print("segment \(number(c, "segment")): \(SizeParser.format(number(c, "bytes"))), \(Int(((c["dead_ratio"] as? Double) ?? 0) * 100))% dead")
            }
            print("\(candidates.count) segments would be compacted")
        }
        return
    }
    var command = "compact threshold=\(threshold) rate=\(rate)"
    if let maxBytes { command += " max_bytes=\(maxBytes)" }
    let started = try control(mount, command)
    if (started["started"] as? Bool) == false && !json {
        print("a compaction is already running; following it")
    }
    let tty = isatty(1) != 0 && !json
    var lastLine = ""
    var status: [String: Any] = [:]
    while true {
        status = try control(mount, "compact-status")
        let total = max(1, number(status, "candidates"))
        let done = number(status, "segments_compacted")
        if tty {
            let width = 30, filled = Int(min(done, total) * UInt64(width) / total)
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardOutput.write(Data("\r[\(bar)] \(done)/\(total) segments, \(SizeParser.format(number(status, "bytes_reclaimed"))) reclaimed".utf8))
        } else if !json {
            let line = "compacted \(done)/\(total) segments, \(SizeParser.format(number(status, "bytes_reclaimed"))) reclaimed"
            if line != lastLine { print(line) }
            lastLine = line
        }
        if (status["running"] as? Bool) != true { break }
        usleep(200_000)
    }
    if tty { print("") }
    if let error = status["error"] as? String { throw failure("compaction stopped: \(error)") }
    if json {
        printJSON(["segments_compacted": number(status, "segments_compacted"), "blocks_moved": number(status, "blocks_moved"),
                   "bytes_moved": number(status, "bytes_moved"), "bytes_reclaimed": number(status, "bytes_reclaimed"),
                   "seconds": (status["seconds"] as? Double) ?? 0])
    } else {
        print("done: \(number(status, "segments_compacted")) segments compacted, \(number(status, "blocks_moved")) blocks moved, "
              + "\(SizeParser.format(number(status, "bytes_reclaimed"))) reclaimed in \(String(format: "%.1f", (status["seconds"] as? Double) ?? 0)) s")
    }
}

struct Evict: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a namespace's blocks (all, or those older than a duration).")

    @Argument(help: "The mount point.") var mount: String
    @Argument(help: "The namespace.") var namespace: String
    @Option(help: "Only blocks committed longer ago than this (e.g. 90s, 30m, 12h, 7d).") var olderThan: String?
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        var command = "evict ns=\(namespace)"
        if let olderThan {
            guard let seconds = parseDuration(olderThan) else { throw failure("--older-than: '\(olderThan)' is not a duration (90s, 30m, 12h, 7d)") }
            command += " older_than=\(seconds)"
        }
        let answer = try control(mount, command)
        if json {
            printJSON(answer)
        } else {
            print("evicted \(number(answer, "removed_blocks")) blocks (\(SizeParser.format(number(answer, "removed_bytes")))) from \(namespace)")
        }
    }
}

struct Prefetch: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ask the daemon to load blocks into the DRAM tier before they are read.")

    @Argument(help: "The mount point.") var mount: String
    @Argument(help: "The namespace.") var namespace: String
    @Argument(help: "Block names.") var names: [String]
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        if names.isEmpty { throw ValidationError("give at least one block name") }
    }

    func run() throws {
        let lines = names.map { "\(namespace) \($0)\n" }.joined()
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
        @Option(help: "Logical bytes the namespace may hold (e.g. 500G), or none.") var quota: String?
        @Option(help: "Time to live of its blocks (e.g. 30m, 24h, 7d), or none.") var ttl: String?
        @Flag(inversion: .prefixedNo, help: "Keep its blocks through eviction while within the quota.") var pin: Bool?
        @Option(help: "Compression of blocks written from now on: off, lz4 or auto.") var compression: String?
        @Option(help: "Sharing through the cluster tier (mounts with --cluster): off, async, sync, or default (twfs --share).")
        var share: String?

        func command(_ namespace: String) throws -> String? {
            var parts: [String] = []
            if let quota {
                if quota == "none" { parts.append("quota=0") } else {
                    guard let v = SizeParser.parse(quota) else { throw failure("--quota: '\(quota)' is not a size (500G) or none") }
                    parts.append("quota=\(v)")
                }
            }
            if let ttl {
                if ttl == "none" { parts.append("ttl=0") } else {
                    guard let v = parseDuration(ttl), v > 0 else { throw failure("--ttl: '\(ttl)' is not a duration (30m, 24h, 7d) or none") }
                    parts.append("ttl=\(v)")
                }
            }
            if let pin { parts.append("pinned=\(pin ? 1 : 0)") }
            if let compression {
                guard ["off", "lz4", "auto"].contains(compression) else { throw failure("--compression: '\(compression)' is not off, lz4 or auto") }
                parts.append("compression=\(compression)")
            }
            if let share {
                guard ["off", "async", "sync", "default"].contains(share) else { throw failure("--share: '\(share)' is not off, async, sync or default") }
                parts.append("share=\(share)")
            }
            return parts.isEmpty ? nil : "ns-set ns=\(namespace) " + parts.joined(separator: " ")
        }
    }

    static func show(_ ns: [String: Any]) -> String {
        let quota = number(ns, "quota_bytes"), ttl = number(ns, "ttl_seconds")
        return "\(ns["name"] ?? "?")  owner \(number(ns, "owner")):\(number(ns, "group")) mode \(ns["mode"] ?? "?")  "
            + "\(number(ns, "blocks")) blocks, \(SizeParser.format(number(ns, "logical_bytes")))  "
            + "quota \(quota > 0 ? SizeParser.format(quota) : "none")  ttl \(ttl > 0 ? "\(ttl)s" : "none")  "
            + "\((ns["pinned"] as? Bool) == true ? "pinned" : "not pinned")  compression \(ns["compression"] ?? "off")  "
            + "share \(ns["share"] ?? "off")\(ns["share_set"] is NSNull ? " (default)" : "")"
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
            let command = try policy.command(namespace)   // bad values are refused before anything is created
            if mkdir(mount + "/" + namespace, mode_t(m)) != 0 {
                throw failure("cannot create \(mount)/\(namespace): \(String(cString: strerror(errno)))")
            }
            // mkdir applies the umask; the namespace gets the mode asked for.
            _ = chmod(mount + "/" + namespace, mode_t(m))
            let answer = try command.map { try control(mount, $0) }
            let listed = try control(mount, "ns-list")["namespaces"] as? [[String: Any]]
            let info = (answer?["namespace"] as? [String: Any]) ?? listed?.first { ($0["name"] as? String) == namespace } ?? [:]
            if json { printJSON(info) } else { print("created " + Namespace.show(info)) }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List namespaces with their use and policy.")
        @Argument(help: "The mount point.") var mount: String
        @Flag(help: "Print one JSON object.") var json = false

        func run() throws {
            let answer = try control(mount, "ns-list")
            if json {
                printJSON(answer)
            } else {
                for ns in answer["namespaces"] as? [[String: Any]] ?? [] { print(Namespace.show(ns)) }
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
            guard let command = try policy.command(namespace) else { throw failure("nothing to set: give --quota, --ttl, --pin/--no-pin, --compression or --share") }
            let info = try control(mount, command)["namespace"] as? [String: Any] ?? [:]
            if json { printJSON(info) } else { print(Namespace.show(info)) }
        }
    }
}
