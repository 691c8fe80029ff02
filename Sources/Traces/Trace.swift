import Foundation

/// One request of a trace in the Mooncake format (docs/design.md "twctl"): when it arrives, how many tokens
/// it brings and asks for, and the prefix hash of each of its 512-token blocks, in order.
public struct TraceRequest: Sendable, Equatable {
    public var timestampMilliseconds: Double
    public var inputLength: Int
    public var outputLength: Int
    public var hashIDs: [Int]

    public init(timestampMilliseconds: Double, inputLength: Int, outputLength: Int, hashIDs: [Int]) {
        self.timestampMilliseconds = timestampMilliseconds
        self.inputLength = inputLength
        self.outputLength = outputLength
        self.hashIDs = hashIDs
    }
}

public struct TraceError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A trace: requests in arrival order.
public struct Trace: Sendable {
    public var requests: [TraceRequest]
    public static let tokensPerBlock = 512

    public init(requests: [TraceRequest]) { self.requests = requests }

    /// Reads JSON lines `{"timestamp": ms, "input_length": N, "output_length": N, "hash_ids": [...]}`.
    public static func load(path: String) throws -> Trace {
        guard let data = FileManager.default.contents(atPath: path) else { throw TraceError("cannot read trace \(path)") }
        return try parse(data, name: path)
    }

    public static func parse(_ data: Data, name: String = "trace") throws -> Trace {
        var requests: [TraceRequest] = []
        var lineNumber = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            if line.allSatisfy({ $0 == 32 || $0 == 9 || $0 == 13 }) { continue }
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                  let ids = object["hash_ids"] as? [Any] else {
                throw TraceError("\(name) line \(lineNumber): not a Mooncake trace record (needs a hash_ids list)")
            }
            var hashIDs: [Int] = []
            hashIDs.reserveCapacity(ids.count)
            for id in ids {
                guard let n = id as? NSNumber else { throw TraceError("\(name) line \(lineNumber): hash_ids must be integers") }
                hashIDs.append(n.intValue)
            }
            let timestamp = (object["timestamp"] as? NSNumber)?.doubleValue ?? Double(requests.count)
            let input = (object["input_length"] as? NSNumber)?.intValue ?? hashIDs.count * tokensPerBlock
            let output = (object["output_length"] as? NSNumber)?.intValue ?? 0
            requests.append(TraceRequest(timestampMilliseconds: timestamp, inputLength: input, outputLength: output, hashIDs: hashIDs))
        }
        return Trace(requests: requests)
    }

    /// The trace as JSON lines.
    public func jsonLines() -> String {
        var out = ""
        for r in requests {
            let ts = r.timestampMilliseconds == r.timestampMilliseconds.rounded() ? String(Int(r.timestampMilliseconds)) : String(r.timestampMilliseconds)
            out += "{\"timestamp\": \(ts), \"input_length\": \(r.inputLength), \"output_length\": \(r.outputLength), \"hash_ids\": ["
            out += r.hashIDs.map(String.init).joined(separator: ", ")
            out += "]}\n"
        }
        return out
    }

    /// Every block id of every request, in arrival order.
    public var references: [Int] { requests.flatMap(\.hashIDs) }

    public var uniqueBlocks: Int { Set(references).count }

    /// The hit ratio of an infinite cache that starts empty: every first reference misses.
    public var idealHitRatio: Double {
        let refs = requests.reduce(0) { $0 + $1.hashIDs.count }
        return refs == 0 ? 0 : 1 - Double(uniqueBlocks) / Double(refs)
    }
}
