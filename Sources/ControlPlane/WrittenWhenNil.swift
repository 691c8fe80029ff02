/// An optional that the JSON always carries, as `null` when nil. Synthesized `Codable` leaves nil
/// optionals out; scripts that read the control files test `answer["error"] is None` rather than
/// whether a key exists, so the keys they test are marked with this wrapper instead of each type
/// writing its encoder by hand. Decoding accepts the key missing as well as null.
@propertyWrapper
public struct WrittenWhenNil<Value: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
    public var wrappedValue: Value?

    public init(wrappedValue: Value?) {
        self.wrappedValue = wrappedValue
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        wrappedValue = c.decodeNil() ? nil : try c.decode(Value.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        if let wrappedValue { try c.encode(wrappedValue) } else { try c.encodeNil() }
    }
}

extension KeyedDecodingContainer {
    /// A missing key decodes as nil (the synthesized decoder would otherwise require it).
    public func decode<Value>(_ type: WrittenWhenNil<Value>.Type, forKey key: Key) throws -> WrittenWhenNil<Value> {
        try decodeIfPresent(type, forKey: key) ?? WrittenWhenNil(wrappedValue: nil)
    }
}
