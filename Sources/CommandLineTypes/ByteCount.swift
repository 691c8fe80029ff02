// CommandLineTypes: sizes and durations as people write them on twfs's and twctl's command lines, one
// parser each, shared by both tools, that refuses what it cannot represent instead of trapping. Plain
// values: safe from any thread.
import ArgumentParser

/// A number of bytes as operators write it: `4096`, `512K`, `512M`, `20G`, `1.5T`, `2P` (powers of
/// 1024), also with `iB` or `B` (`512MiB`, `20GB`). What `description` prints reads back the same.
public struct ByteCount: Sendable, Equatable, Comparable, CustomStringConvertible, ExpressibleByArgument {
    public let bytes: UInt64

    public init(bytes: UInt64) { self.bytes = bytes }

    /// Parses `text`; nil when it is not a size or does not fit in 64 bits.
    public init?(parsing text: String) {
        var s = Substring(text.trimmingCharacters())
        if s.uppercased().hasSuffix("IB") { s = s.dropLast(2) } else if s.count > 1, s.uppercased().hasSuffix("B") { s = s.dropLast() }
        var power = 0
        if let last = s.last?.uppercased(), let p = ["K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6][last] {
            power = p
            s = s.dropLast()
        }
        guard !s.isEmpty, s.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) else { return nil }
        // Whole numbers are exact (a Double would round 2^64 - 1); fractions go through a Double.
        if let whole = UInt64(s) {
            var total = whole
            for _ in 0..<power {
                let (next, overflow) = total.multipliedReportingOverflow(by: 1024)
                if overflow { return nil }
                total = next
            }
            bytes = total
            return
        }
        guard let value = Double(s), value.isFinite, value >= 0 else { return nil }
        let total = (0..<power).reduce(value) { r, _ in r * 1024 }
        // 2^64 is the first value that does not fit (Double(UInt64.max) rounds up to it).
        guard total < 18_446_744_073_709_551_616.0 else { return nil }
        bytes = UInt64(total)
    }

    public init?(argument: String) { self.init(parsing: argument) }

    public static func < (a: ByteCount, b: ByteCount) -> Bool { a.bytes < b.bytes }

    /// The shortest exact text: `512M`, `1G`, `1536K`, `4097`; `parse(description)` gives the same value.
    public var description: String {
        let units = ["", "K", "M", "G", "T", "P", "E"]
        var value = bytes, unit = 0
        while unit < units.count - 1 && value >= 1024 && value % 1024 == 0 {
            value /= 1024
            unit += 1
        }
        return "\(value)\(units[unit])"
    }

    /// `1.5 GiB`-style text for people (rounded; not for reading back).
    public var approximate: String { Self.approximate(bytes) }

    public static func approximate(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var v = Double(bytes), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        if i == 0 { return "\(bytes) B" }
        return "\((v * 10).rounded() / 10) \(units[i])"
    }
}

/// A duration in whole seconds as people write it: `90`, `30s`, `10m`, `2h`, `7d`, `1w`, `1.5h`.
public struct TimeSpan: Sendable, Equatable, CustomStringConvertible, ExpressibleByArgument {
    public let seconds: UInt64

    public init(seconds: UInt64) { self.seconds = seconds }

    public init?(parsing text: String) {
        let t = text.trimmingCharacters()
        if let n = UInt64(t) {
            seconds = n
            return
        }
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800]
        guard let last = t.last, let unit = units[last], let value = Double(t.dropLast()), value.isFinite, value >= 0 else { return nil }
        let total = value * unit
        guard total < 18_446_744_073_709_551_616.0 else { return nil }
        seconds = UInt64(total)
    }

    public init?(argument: String) { self.init(parsing: argument) }

    public var description: String {
        for (unit, size) in [("w", UInt64(604_800)), ("d", 86400), ("h", 3600), ("m", 60)] where seconds >= size && seconds % size == 0 {
            return "\(seconds / size)\(unit)"
        }
        return "\(seconds)s"
    }
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
