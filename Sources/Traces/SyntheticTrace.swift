import WarehouseCore

/// Generates traces in the Mooncake format with the shapes of real KV-cache traffic, so replay and plan
/// need no file: ids are prefix hashes (a trie of block contents), so equal ids mean equal prefixes.
public enum SyntheticWorkload: String, CaseIterable, Sendable {
    /// Tool-call loops: each turn's prompt is the previous prompt plus the model's reply and a tool's
    /// output; sessions share a few system prompts.
    case agentic
    /// Multi-turn chat: shorter turns, fewer of them, many sessions.
    case chat
    /// Retrieval: a shared system prompt, then documents drawn from a popular-first corpus, then a question.
    case rag
}

/// Assigns prefix-hash ids: the id of a block is determined by its parent's id and its own content.
struct PrefixTrie {
    private var ids: [Int: [Int: Int]] = [:]  // parent id (-1 for root) -> content -> id
    private(set) var count = 0

    mutating func id(parent: Int, content: Int) -> Int {
        if let id = ids[parent]?[content] { return id }
        let id = count
        count += 1
        ids[parent, default: [:]][content] = id
        return id
    }

    mutating func ids(of contents: [Int]) -> [Int] {
        var parent = -1
        return contents.map { c in
            parent = id(parent: parent, content: c)
            return parent
        }
    }
}

public struct SyntheticTraceGenerator {
    public var workload: SyntheticWorkload
    public var requests: Int
    public var seed: UInt64
    /// Mean requests per second of arrivals (Poisson).
    public var requestsPerSecond: Double

    public init(workload: SyntheticWorkload, requests: Int = 4000, seed: UInt64 = 1, requestsPerSecond: Double = 4) {
        self.workload = workload
        self.requests = requests
        self.seed = seed
        self.requestsPerSecond = requestsPerSecond
    }

    struct Session {
        var contents: [Int]
        var turnsLeft: Int
    }

    public func generate() -> Trace {
        var rng = SeededGenerator(seed: seed &* 0x2545_F491_4F6C_DD1D &+ UInt64(workload.hashValueStable))
        var trie = PrefixTrie()
        var nextContent = 1_000_000
        func fresh(_ n: Int) -> [Int] {
            defer { nextContent += n }
            return Array(nextContent..<(nextContent + n))
        }
        // Shared system prompts (content ids 0..<1000 are reserved for them and documents).
        let systemPrompts: [[Int]] = (0..<4).map { p in (0..<Int.random(in: 2...8, using: &rng)).map { p * 100 + $0 } }
        var clock = 0.0
        var out: [TraceRequest] = []
        var active: [Session] = []
        let targetActive: Int
        switch workload {
        case .agentic: targetActive = 24
        case .chat: targetActive = 48
        case .rag: targetActive = 0
        }
        // Documents for RAG: 400 documents of 2 to 12 blocks, drawn with a Zipf-like popularity.
        let documents: [[Int]] = (0..<400).map { _ in fresh(Int.random(in: 2...12, using: &rng)) }
        func zipf(_ n: Int) -> Int {
            // Inverse-CDF of a 1/rank law, approximately: rank = n^u.
            let u = Double.random(in: 0..<1, using: &rng)
            return min(n - 1, Int(pow(Double(n), u)) - 1)
        }
        while out.count < requests {
            clock += -log(1 - Double.random(in: 0..<1, using: &rng)) / requestsPerSecond * 1000
            var contents: [Int]
            var outputTokens: Int
            switch workload {
            case .rag:
                contents = systemPrompts[zipf(systemPrompts.count)]
                for _ in 0..<Int.random(in: 1...4, using: &rng) { contents += documents[zipf(documents.count)] }
                contents += fresh(1)
                outputTokens = Int.random(in: 64...512, using: &rng)
            case .agentic, .chat:
                if active.count < targetActive || Double.random(in: 0..<1, using: &rng) < 0.05 {
                    let system = systemPrompts[zipf(systemPrompts.count)]
                    let task = fresh(workload == .agentic ? Int.random(in: 2...16, using: &rng) : Int.random(in: 1...3, using: &rng))
                    let turns = workload == .agentic ? Int.random(in: 4...30, using: &rng) : Int.random(in: 1...8, using: &rng)
                    active.append(Session(contents: system + task, turnsLeft: turns))
                }
                let i = Int.random(in: 0..<active.count, using: &rng)
                contents = active[i].contents
                outputTokens = Int.random(in: 32...(workload == .agentic ? 400 : 600), using: &rng)
                // The next turn extends this prompt with the reply and new input (tool output or user).
                let reply = fresh(max(1, outputTokens / Trace.tokensPerBlock))
                let input = fresh(workload == .agentic ? Int.random(in: 1...6, using: &rng) : Int.random(in: 1...2, using: &rng))
                active[i].contents += reply + input
                active[i].turnsLeft -= 1
                if active[i].turnsLeft <= 0 || active[i].contents.count > 400 { active.remove(at: i) }
            }
            let ids = trie.ids(of: contents)
            let input = contents.count * Trace.tokensPerBlock - Int.random(in: 0..<Trace.tokensPerBlock, using: &rng)
            out.append(TraceRequest(timestampMilliseconds: clock.rounded(), inputLength: input, outputLength: outputTokens, hashIDs: ids))
        }
        return Trace(requests: out)
    }
}

extension SyntheticWorkload {
    var hashValueStable: Int {
        switch self {
        case .agentic: 1
        case .chat: 2
        case .rag: 3
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
