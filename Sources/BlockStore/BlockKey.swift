/// The in-memory identity of a block: a 128-bit XXH3 of "namespace/key".
///
/// The index stores this instead of the name (names live in the record headers on disk). Every read
/// compares the full name in the record header with the requested one, so a hash collision can
/// make a block look absent, never return another block's bytes.
public struct BlockKey: Hashable, Sendable {
    public let low: UInt64
    public let high: UInt64

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// The key of `key` in namespace `namespace`. `/` cannot occur in either, so the join is unambiguous.
    public init(namespace: String, key: String) {
        var joined = namespace
        joined.append("/")
        joined.append(key)
        let h = joined.utf8.withContiguousStorageIfAvailable { Checksum.xxh3_128(UnsafeRawBufferPointer($0)) }
            ?? Array(joined.utf8).withUnsafeBytes { Checksum.xxh3_128($0) }
        low = h.0
        high = h.1
    }

    public static func == (a: BlockKey, b: BlockKey) -> Bool { a.low == b.low && a.high == b.high }
    public func hash(into hasher: inout Hasher) { hasher.combine(low) }
}

/// The naming rules of DESIGN.md ("Naming: namespaces and block files").
public enum BlockName {
    public static let maxNamespaceLength = 128
    public static let maxKeyLength = 255
    public static let minHashLength = 16
    public static let maxHashLength = 128

    /// Whether `name` is a valid namespace name: `[A-Za-z0-9._@+-]{1,128}`, not starting with `.`.
    public static func isValidNamespace(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= maxNamespaceLength, bytes[0] != UInt8(ascii: ".") else { return false }
        return bytes.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
                || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "@")
                || b == UInt8(ascii: "+") || b == UInt8(ascii: "-")
        }
    }

    /// Whether `name` is a canonical prefix hash: 16 to 128 lowercase hex characters.
    public static func isCanonicalHash<S: Collection>(_ name: S) -> Bool where S.Element == UInt8 {
        name.count >= minHashLength && name.count <= maxHashLength && name.allSatisfy(isLowerHex)
    }

    /// Whether `name` is a fan-out directory name: exactly two lowercase hex characters.
    public static func isFanout<S: Collection>(_ name: S) -> Bool where S.Element == UInt8 {
        name.count == 2 && name.allSatisfy(isLowerHex)
    }

    /// Whether `name` may be a compatibility block name: 1 to 255 bytes, no `/` or NUL, not `.`/`..`.
    public static func isValidKey<S: Collection>(_ name: S) -> Bool where S.Element == UInt8 {
        guard !name.isEmpty, name.count <= maxKeyLength else { return false }
        if name.count <= 2 && name.allSatisfy({ $0 == UInt8(ascii: ".") }) { return false }
        return !name.contains(UInt8(ascii: "/")) && !name.contains(0)
    }

    /// The fan-out byte of a canonical hash (its first two hex characters), or nil for other names.
    public static func fanout<S: Collection>(of name: S) -> UInt8? where S.Element == UInt8 {
        guard isCanonicalHash(name) else { return nil }
        let a = hexValue(name[name.startIndex]), b = hexValue(name[name.index(after: name.startIndex)])
        return UInt8(a << 4 | b)
    }

    /// Why a name cannot name a block file.
    public enum FileNameError: Error, Equatable, Sendable {
        /// More than 255 bytes (`ENAMETOOLONG`).
        case tooLong
        /// Not UTF-8, not a valid key, or in a fan-out directory not a canonical hash of that fan-out (`EINVAL`).
        case invalid
    }

    /// Checks that `name` may name a block file: in fan-out directory `fanout`, a canonical hash whose
    /// first two characters are that fan-out; directly in a namespace (`fanout` nil), any valid key.
    /// Names are kept as UTF-8 text, so other byte strings are refused rather than altered.
    /// - Returns: nil when the name is acceptable, otherwise why not.
    public static func checkBlockFileName(_ name: [UInt8], inFanout fanout: UInt8?) -> FileNameError? {
        if name.count > maxKeyLength { return .tooLong }
        if String(validating: name, as: UTF8.self) == nil { return .invalid }
        if let fanout {
            return isCanonicalHash(name) && self.fanout(of: name) == fanout ? nil : .invalid
        }
        return isValidKey(name) ? nil : .invalid
    }

    @inline(__always)
    static func isLowerHex(_ b: UInt8) -> Bool { (b >= 0x30 && b <= 0x39) || (b >= 0x61 && b <= 0x66) }

    @inline(__always)
    static func hexValue(_ b: UInt8) -> UInt8 { b <= 0x39 ? b - 0x30 : b - 0x61 + 10 }
}
