/// The naming rules of docs/design.md ("Naming"): namespace names, canonical prefix hashes, and the
/// file and directory names allowed anywhere inside a namespace.
public enum BlockName {
    public static let maxNamespaceLength = 128
    /// A file or directory name (one path component).
    public static let maxComponentLength = 255
    /// A path inside a namespace, in bytes (its key is at most this long too).
    public static let maxPathLength = 4096
    /// Directories below a namespace, so a file sits at most this many components deep.
    public static let maxDepth = 16
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

    // The generic checks below are inlinable so callers in other modules get them specialized for
    // their collection (String.UTF8View, arrays, buffers): unspecialized, each byte went through a
    // witness table, and recovery spent a fifth of its time here.

    /// Whether `name` is a canonical prefix hash: 16 to 128 lowercase hex characters.
    @inlinable
    public static func isCanonicalHash<S: Collection>(_ name: S) -> Bool where S.Element == UInt8 {
        name.count >= minHashLength && name.count <= maxHashLength && name.allSatisfy(isLowerHex)
    }

    /// Whether `name` is a fan-out directory name: exactly two lowercase hex characters.
    @inlinable
    public static func isFanout<S: Collection>(_ name: S) -> Bool where S.Element == UInt8 {
        name.count == 2 && name.allSatisfy(isLowerHex)
    }

    /// The fan-out byte of a canonical hash (its first two hex characters), or nil for other names.
    @inlinable
    public static func fanout<S: Collection>(of name: S) -> UInt8? where S.Element == UInt8 {
        guard isCanonicalHash(name) else { return nil }
        return fanoutValue(name)
    }

    /// The byte a two-hex-character fan-out directory name stands for, or nil.
    @inlinable
    public static func fanoutByte<S: Collection>(ofDirectory name: S) -> UInt8? where S.Element == UInt8 {
        guard isFanout(name) else { return nil }
        return fanoutValue(name)
    }

    @inlinable
    static func fanoutValue<S: Collection>(_ name: S) -> UInt8 where S.Element == UInt8 {
        let a = hexValue(name[name.startIndex]), b = hexValue(name[name.index(after: name.startIndex)])
        return UInt8(a << 4 | b)
    }

    /// Whether `name` may be a file or directory name: 1 to 255 bytes, no `/` or NUL, not `.`/`..`.
    @inlinable
    public static func isValidComponent<S: Collection>(_ name: S) -> Bool where S.Element == UInt8 {
        guard !name.isEmpty, name.count <= maxComponentLength else { return false }
        if name.count <= 2 && name.allSatisfy({ $0 == UInt8(ascii: ".") }) { return false }
        return !name.contains(UInt8(ascii: "/")) && !name.contains(0)
    }

    /// Why a name cannot name a file or directory.
    public enum NameError: Error, Equatable, Sendable {
        /// More than 255 bytes (`ENAMETOOLONG`).
        case tooLong
        /// Empty, `.`, `..`, holding `/` or NUL, or not UTF-8 (`EINVAL`).
        case invalid
    }

    /// Checks that `name` may name a file or directory inside a namespace. Names are kept as UTF-8
    /// text, so other byte strings are refused rather than altered.
    public static func checkComponent(_ name: [UInt8]) -> Result<String, NameError> {
        if name.count > maxComponentLength { return .failure(.tooLong) }
        guard isValidComponent(name), let text = String(validating: name, as: UTF8.self) else { return .failure(.invalid) }
        return .success(text)
    }

    @inlinable @inline(__always)
    static func isLowerHex(_ b: UInt8) -> Bool { (b >= 0x30 && b <= 0x39) || (b >= 0x61 && b <= 0x66) }

    @inlinable @inline(__always)
    static func hexValue(_ b: UInt8) -> UInt8 { b <= 0x39 ? b - 0x30 : b - 0x61 + 10 }
}

/// How a path inside a namespace becomes a block key (docs/format.md "Keys"). The key is the path
/// relative to the namespace, with two exceptions that keep the canonical layout's meaning:
///
/// - `hh/HASH` (a canonical hash in the fan-out directory of its first two characters) is the key
///   `HASH`: the name the DRAM tier, the prefetcher, chain links and the cluster tier know it by;
/// - a canonical hash directly in the namespace, `HASH`, is the key `/HASH`, so it is a block of its
///   own and not the canonical block of that hash.
///
/// Every other path `a/b/c` is the key `a/b/c`. Keys never end in `/` and never hold an empty component.
public enum BlockPath {
    /// The key of the file `name` in directory `directory` (a path relative to the namespace, "" for
    /// the namespace itself).
    public static func key(directory: String, name: String) -> String {
        if directory.isEmpty {
            return BlockName.isCanonicalHash(name.utf8) ? "/" + name : name
        }
        if directory.utf8.count == 2, BlockName.isCanonicalHash(name.utf8), name.utf8.starts(with: directory.utf8) {
            return name
        }
        return directory + "/" + name
    }

    /// The key of a path relative to the namespace (`a/b/c.bin`, `3f/3fa9…`), or nil when the path is
    /// not a valid one (empty components, `.`/`..`, too long or too deep).
    public static func key(relativePath path: String) -> String? {
        let components = self.components(of: path, keepingEmpty: true)
        guard !components.isEmpty, components.count <= BlockName.maxDepth + 1, path.utf8.count <= BlockName.maxPathLength,
              components.allSatisfy({ BlockName.isValidComponent($0.utf8) }) else { return nil }
        let name = components.last!
        let directory = components.dropLast().joined(separator: "/")
        return key(directory: directory, name: name)
    }

    /// The components of a path, split at the byte `/`. Not at the Character "/": a `/` followed by a
    /// combining mark is one Character in Swift, and a name may begin with a combining mark.
    public static func components(of path: String, keepingEmpty: Bool = false) -> [String] {
        path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: !keepingEmpty).map { String(decoding: $0, as: UTF8.self) }
    }

    /// A block name as the clients and hint lines give it: a bare canonical hash means its canonical
    /// block (`HASH`), a name with `/` is a relative path, any other name is a file in the namespace.
    public static func key(clientName name: String) -> String? {
        if BlockName.isCanonicalHash(name.utf8) { return name }
        return key(relativePath: name)
    }

    /// The path relative to the namespace of the block with key `key` (the inverse of `key`).
    public static func relativePath(ofKey key: String) -> String {
        if key.hasPrefix("/") { return String(key.dropFirst()) }
        if BlockName.isCanonicalHash(key.utf8) { return String(key.prefix(2)) + "/" + key }
        return key
    }

    /// The directory (relative to the namespace, "" for the namespace itself) and file name of a key.
    public static func split(key: String) -> (directory: String, name: String) {
        let path = relativePath(ofKey: key)
        let bytes = path.utf8
        guard let slash = bytes.lastIndex(of: UInt8(ascii: "/")) else { return ("", path) }
        // Sliced by UTF-8 index: `index(after:)` on the String would step over the whole Character
        // "/" makes with a combining mark after it.
        return (String(decoding: bytes[..<slash], as: UTF8.self), String(decoding: bytes[bytes.index(after: slash)...], as: UTF8.self))
    }
}

extension BlockPath {
    /// Whether `key` is a key as `key(directory:name:)` makes them: a canonical hash, `/` and a
    /// canonical hash, or a valid relative path that is not the canonical path of a hash.
    public static func isValidKey(_ key: String) -> Bool {
        let bytes = key.utf8
        guard !bytes.isEmpty, bytes.count <= BlockName.maxPathLength + 1 else { return false }
        if BlockName.isCanonicalHash(bytes) { return true }
        if bytes.first == UInt8(ascii: "/") { return BlockName.isCanonicalHash(bytes.dropFirst()) }
        return self.key(relativePath: key) == key
    }
}
