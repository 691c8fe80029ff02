import WarehouseCore

/// A request to the daemon through `MOUNT/.tw/ctl` (docs/operations.md): open it read-write, write one
/// request, read the answer (`ControlResponse`) from the same descriptor. A request is a JSON object
/// (what twctl sends) or, for people at a shell, a command line `VERB KEY=VALUE ...` with the same
/// fields (`ns-set ns=llama quota=1073741824`).
public struct ControlRequest: Codable, Sendable, Equatable {
    public enum Command: String, Codable, Sendable, CaseIterable {
        /// Start online compaction (`threshold`, `max_bytes`, `rate`).
        case compact
        /// The running or last compaction.
        case compactStatus = "compact-status"
        /// Segments compaction at `threshold` would rewrite.
        case compactCandidates = "compact-candidates"
        /// Remove a namespace's blocks (all, or committed more than `older_than` seconds ago); a job.
        case evict
        /// Change a namespace's quota, time to live, pinning, compression or share policy.
        case namespaceSet = "ns-set"
        /// The namespaces with their use and policy.
        case namespaceList = "ns-list"
        /// Shrink the shared pool to `target` bytes (least recently used first); a job.
        case clusterGC = "cluster-gc"
        /// A job started earlier (`job` = its id).
        case job
    }

    public var command: Command
    public var namespace: String?
    public var threshold: Double?
    public var maxBytes: UInt64?
    public var rate: UInt64?
    public var olderThan: UInt64?
    public var quota: UInt64?
    public var ttl: UInt64?
    public var pinned: Bool?
    public var compression: String?
    /// `off`, `async`, `sync`, or `default` (back to the daemon's `--share`).
    public var share: String?
    public var target: UInt64?
    public var job: Int?

    public init(command: Command, namespace: String? = nil) {
        self.command = command
        self.namespace = namespace
    }

    enum CodingKeys: String, CodingKey {
        case command, namespace = "ns", threshold, maxBytes = "max_bytes", rate, olderThan = "older_than", quota, ttl, pinned
        case compression, share, target, job
    }

    /// Requests longer than this are refused (`E2BIG`) before they are parsed.
    public static let maxLength = 65536

    /// Why a request could not be read, for the answer's `error`.
    public struct ParseError: Error, Equatable, Sendable {
        public let message: String
        public init(_ message: String) { self.message = message }
    }

    /// Parses a request: a JSON object, or a command line. Every number is checked (no negative, no
    /// overflow, thresholds within 0 to 1, times to live within 100 years).
    public static func parse(_ bytes: [UInt8]) throws(ParseError) -> ControlRequest {
        guard bytes.count <= maxLength else { throw ParseError("a request is at most \(maxLength) bytes") }
        let text = String(decoding: bytes, as: UTF8.self)
        let trimmed = text.drop { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        var request: ControlRequest
        if trimmed.first == "{" {
            do { request = try ControlJSON.decode(ControlRequest.self, from: Array(trimmed.utf8)) } catch {
                throw ParseError("the request is not a valid JSON request object: \(error)")
            }
        } else {
            request = try parseLine(String(trimmed))
        }
        try request.validate()
        return request
    }

    private static func parseLine(_ line: String) throws(ParseError) -> ControlRequest {
        var words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }).map(String.init)
        guard !words.isEmpty else { throw ParseError("empty command") }
        let verb = words.removeFirst()
        guard let command = Command(rawValue: verb) else { throw ParseError("unknown command '\(verb.prefix(64))'") }
        var r = ControlRequest(command: command)
        for w in words {
            let kv = w.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw ParseError("argument '\(w.prefix(64))' is not KEY=VALUE") }
            let (key, value) = (kv[0], kv[1])
            func number() throws(ParseError) -> UInt64 {
                guard let n = UInt64(value) else { throw ParseError("\(key) is a whole number of \(key == "ttl" || key == "older_than" ? "seconds" : "bytes"), not '\(value.prefix(64))'") }
                return n
            }
            switch key {
            case "ns": r.namespace = value
            case "threshold":
                guard let t = Double(value) else { throw ParseError("threshold is a number from 0 to 1") }
                r.threshold = t
            case "max_bytes": r.maxBytes = try number()
            case "rate": r.rate = try number()
            case "older_than": r.olderThan = try number()
            case "quota": r.quota = try number()
            case "ttl": r.ttl = try number()
            case "pinned":
                guard value == "0" || value == "1" else { throw ParseError("pinned is 0 or 1") }
                r.pinned = value == "1"
            case "compression": r.compression = value
            case "share": r.share = value
            case "target": r.target = try number()
            case "job":
                guard let n = Int(value), n >= 0 else { throw ParseError("job is a job id") }
                r.job = n
            default: throw ParseError("unknown argument '\(key.prefix(64))'")
            }
        }
        return r
    }

    /// Checks what every command needs and every value's range.
    public func validate() throws(ParseError) {
        if let t = threshold, !(t >= 0 && t <= 1) { throw ParseError("threshold must be 0 to 1") }
        if let c = compression, !["off", "lz4", "auto"].contains(c) { throw ParseError("compression is off, lz4 or auto") }
        if let s = share, !["off", "async", "sync", "default"].contains(s) { throw ParseError("share is off, async, sync or default") }
        if let ttl, ttl > 100 * 366 * 86_400 { throw ParseError("ttl is at most 100 years (3162240000 seconds)") }
        if let o = olderThan, o > 1 << 40 { throw ParseError("older_than is too large (at most \(1 << 40) seconds)") }
        switch command {
        case .evict, .namespaceSet:
            guard namespace != nil else { throw ParseError("\(command.rawValue) needs ns=NAMESPACE") }
        case .clusterGC:
            guard target != nil else { throw ParseError("cluster-gc needs target=BYTES") }
        case .job:
            guard job != nil else { throw ParseError("job needs job=ID") }
        default:
            break
        }
    }
}

/// The answer to a `ControlRequest`: one JSON object, `error` set when the request failed.
public struct ControlResponse: Codable, Sendable, Equatable {
    public var error: String?
    public var started: Bool?
    public var compaction: CompactionStatus?
    public var candidates: [CompactionCandidate]?
    public var namespace: NamespaceReport?
    public var namespaces: [NamespaceReport]?
    public var job: JobStatus?

    public init(error: String? = nil) { self.error = error }
}

public struct CompactionCandidate: Codable, Sendable, Equatable {
    public var segment: UInt32
    public var bytes: UInt64
    public var deadRatio: Double

    public init(segment: UInt32, bytes: UInt64, deadRatio: Double) {
        self.segment = segment
        self.bytes = bytes
        self.deadRatio = deadRatio
    }

    enum CodingKeys: String, CodingKey { case segment, bytes, deadRatio = "dead_ratio" }
}

/// A long command the daemon runs on a thread of its own (not inside the request): its progress and,
/// once done, its result. A collection's figures (`GarbageReport`) stand beside the job's own keys in
/// one JSON object.
public struct JobStatus: Codable, Sendable, Equatable {
    public var id: Int
    public var command: String
    public var running: Bool
    public var seconds = 0.0
    /// Always in the JSON: null while running and when the job succeeded.
    @WrittenWhenNil public var error: String? = nil
    /// evict: blocks and logical bytes removed.
    public var removedBlocks: Int?
    public var removedBytes: UInt64?
    /// cluster-gc: what the collection did (nil until it is done).
    public var collection: GarbageReport?

    public static let clusterGCCommand = "cluster-gc"

    public init(id: Int, command: String, running: Bool) {
        self.id = id
        self.command = command
        self.running = running
    }

    enum CodingKeys: String, CodingKey {
        case id, command, running, seconds, error, removedBlocks = "removed_blocks", removedBytes = "removed_bytes"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(Int.self, forKey: .id)
        command = try c.decode(String.self, forKey: .command)
        running = try c.decode(Bool.self, forKey: .running)
        seconds = try c.decodeIfPresent(Double.self, forKey: .seconds) ?? 0
        error = try c.decodeIfPresent(String.self, forKey: .error)
        removedBlocks = try c.decodeIfPresent(Int.self, forKey: .removedBlocks)
        if command == Self.clusterGCCommand, !running {
            collection = try GarbageReport(from: decoder)
        } else {
            removedBytes = try c.decodeIfPresent(UInt64.self, forKey: .removedBytes)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(command, forKey: .command)
        try c.encode(running, forKey: .running)
        try c.encode(seconds, forKey: .seconds)
        try c.encode(_error, forKey: .error)
        try c.encodeIfPresent(removedBlocks, forKey: .removedBlocks)
        try c.encodeIfPresent(removedBytes, forKey: .removedBytes)
        try collection?.encode(to: encoder)
    }
}

/// What an engine (a connector in an inference process) reports through `MOUNT/.tw/engine`: one JSON
/// object per line, cumulative counters of one engine instance. The daemon keeps the latest report
/// of each instance (a few per user) and shows them in the status.
public struct EngineReport: Codable, Sendable, Equatable {
    public var engine: String
    public var instance: String
    public var counters: [String: Int64]

    public static let maxLineLength = 4096
    public static let maxCounters = 64

    public init(engine: String, instance: String, counters: [String: Int64]) {
        self.engine = engine
        self.instance = instance
        self.counters = counters
    }

    /// Parses one line; nil when it is not a well-formed report within the limits.
    public static func parse(_ line: [UInt8]) -> EngineReport? {
        guard line.count <= maxLineLength, let r = try? ControlJSON.decode(EngineReport.self, from: line),
              !r.engine.isEmpty, r.engine.utf8.count <= 64, !r.instance.isEmpty, r.instance.utf8.count <= 128,
              r.counters.count <= maxCounters, r.counters.keys.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 64 }) else { return nil }
        return r
    }
}
