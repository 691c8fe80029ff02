// The metadata area of a record header (docs/format.md "Metadata"): tagged fields, each tag (u8),
// length (u16), value. Readers skip tags they do not know, so fields can be added without a new
// record version.
import WarehouseCore

/// Owner, group and permission bits of a block, as `chmod`/`chown` set them.
public struct BlockOwnership: Sendable, Hashable {
    public var uid: UInt32
    public var gid: UInt32
    /// Permission bits (`0o7777` at most).
    public var mode: UInt32

    public init(uid: UInt32, gid: UInt32, mode: UInt32) {
        self.uid = uid
        self.gid = gid
        self.mode = mode & 0o7777
    }
}

/// What a record carries beside its payload: the xattrs of docs/design.md (`user.tw.parent`,
/// `user.tw.tokens`, any other `user.*`), the block's owner and mode, an explicit modification time,
/// and for update records the block record they rebind.
public struct BlockMetadata: Sendable, Equatable {
    public var parent: String?
    public var tokens: String?
    /// `user.*` attributes other than `user.tw.*`, by full name (e.g. `user.vllm.kv_crc32c`).
    public var userAttributes: [String: [UInt8]] = [:]
    /// Owner and mode; nil in records written before blocks had owners (the namespace's are shown).
    public var ownership: BlockOwnership?
    /// Modification time set by `utimes` (nanoseconds since the epoch); nil: the commit time.
    public var modifiedNanoseconds: UInt64?
    /// Access time set by `utimes` (nanoseconds since the epoch); nil: the modification time.
    public var accessedNanoseconds: UInt64?
    /// Update records only: the sequence of the block record this name now stands for.
    public var dataSequence: UInt64?
    /// Update records of a rename only: the name the block had before (for people and `verify`).
    public var previousKey: String?

    public init(parent: String? = nil, tokens: String? = nil, userAttributes: [String: [UInt8]] = [:],
                ownership: BlockOwnership? = nil, modifiedNanoseconds: UInt64? = nil, accessedNanoseconds: UInt64? = nil) {
        self.parent = parent
        self.tokens = tokens
        self.userAttributes = userAttributes
        self.ownership = ownership
        self.modifiedNanoseconds = modifiedNanoseconds
        self.accessedNanoseconds = accessedNanoseconds
    }

    static let parentTag: UInt8 = 1
    static let tokensTag: UInt8 = 2
    static let userAttributeTag: UInt8 = 3
    static let ownershipTag: UInt8 = 4
    static let modifiedTag: UInt8 = 5
    static let dataSequenceTag: UInt8 = 6
    static let previousKeyTag: UInt8 = 7
    static let accessedTag: UInt8 = 8

    /// Bytes of `user.*` attribute names and values a block may hold, in all (docs/design.md).
    public static let userAttributeLimit = 4096

    /// Bytes the user attributes take toward `userAttributeLimit`.
    public var userAttributeBytes: Int { userAttributes.reduce(0) { $0 + $1.key.utf8.count + $1.value.count } }

    public var encodedLength: Int { encoded().count }

    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        func put(_ tag: UInt8, _ value: [UInt8]) {
            out.append(tag)
            out.append(UInt8(value.count & 0xFF))
            out.append(UInt8(value.count >> 8))
            out.append(contentsOf: value)
        }
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        if let parent { put(Self.parentTag, Array(parent.utf8)) }
        if let tokens { put(Self.tokensTag, Array(tokens.utf8)) }
        for (name, value) in userAttributes.sorted(by: { $0.key < $1.key }) {
            let n = Array(name.utf8)
            put(Self.userAttributeTag, [UInt8(n.count)] + n + value)
        }
        if let o = ownership { put(Self.ownershipTag, le(o.uid) + le(o.gid) + le(o.mode)) }
        if let m = modifiedNanoseconds { put(Self.modifiedTag, le(m)) }
        if let s = dataSequence { put(Self.dataSequenceTag, le(s)) }
        if let p = previousKey { put(Self.previousKeyTag, Array(p.utf8)) }
        if let a = accessedNanoseconds { put(Self.accessedTag, le(a)) }
        return out
    }

    /// Decodes a metadata area; nil when a field's length runs past the area or a known field is malformed.
    init?(decoding bytes: UnsafeRawBufferPointer) {
        var at = 0
        while at < bytes.count {
            guard at + 3 <= bytes.count else { return nil }
            let tag = bytes[at]
            let length = Int(bytes[at + 1]) | Int(bytes[at + 2]) << 8
            guard at + 3 + length <= bytes.count else { return nil }
            let value = UnsafeRawBufferPointer(rebasing: bytes[(at + 3)..<(at + 3 + length)])
            switch tag {
            case Self.parentTag: parent = String(decoding: value, as: UTF8.self)
            case Self.tokensTag: tokens = String(decoding: value, as: UTF8.self)
            case Self.userAttributeTag:
                guard length >= 1, 1 + Int(value[0]) <= length else { return nil }
                let nameLength = Int(value[0])
                userAttributes[String(decoding: value[1..<(1 + nameLength)], as: UTF8.self)] = Array(value[(1 + nameLength)...])
            case Self.ownershipTag:
                guard length == 12 else { return nil }
                ownership = BlockOwnership(uid: LittleEndian.load(UInt32.self, at: 0, in: value),
                                           gid: LittleEndian.load(UInt32.self, at: 4, in: value),
                                           mode: LittleEndian.load(UInt32.self, at: 8, in: value))
            case Self.modifiedTag:
                guard length == 8 else { return nil }
                modifiedNanoseconds = LittleEndian.load(UInt64.self, at: 0, in: value)
            case Self.dataSequenceTag:
                guard length == 8 else { return nil }
                dataSequence = LittleEndian.load(UInt64.self, at: 0, in: value)
            case Self.previousKeyTag: previousKey = String(decoding: value, as: UTF8.self)
            case Self.accessedTag:
                guard length == 8 else { return nil }
                accessedNanoseconds = LittleEndian.load(UInt64.self, at: 0, in: value)
            default: break  // a field of a newer writer: skipped
            }
            at += 3 + length
        }
    }
}
