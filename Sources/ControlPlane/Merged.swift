/// Two typed parts shown as one JSON object, their keys side by side, as tools have always read them
/// (the status's top level: its figures and the store's counters; its `dram_tier`: the daemon's settings
/// and the tiers' figures). Each part keeps its own type and keys, so the part that counts fills its
/// type and the report holds it as it is; the fields of either read and set as the whole's own through
/// dynamic member lookup (`status.puts`, `status.dramTier.mountHits`). The parts' keys must not overlap.
/// A plain value: safe from any thread.
@dynamicMemberLookup
public struct Merged<Base: Codable & Sendable & Equatable, Extra: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
    public var base: Base
    public var extra: Extra

    public init(_ base: Base, _ extra: Extra) {
        self.base = base
        self.extra = extra
    }

    public subscript<Value>(dynamicMember path: WritableKeyPath<Base, Value>) -> Value {
        get { base[keyPath: path] }
        set { base[keyPath: path] = newValue }
    }

    public subscript<Value>(dynamicMember path: WritableKeyPath<Extra, Value>) -> Value {
        get { extra[keyPath: path] }
        set { extra[keyPath: path] = newValue }
    }

    public init(from decoder: any Decoder) throws {
        base = try Base(from: decoder)
        extra = try Extra(from: decoder)
    }

    public func encode(to encoder: any Encoder) throws {
        try base.encode(to: encoder)
        try extra.encode(to: encoder)
    }
}
