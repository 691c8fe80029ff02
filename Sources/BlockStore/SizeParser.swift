/// Parses sizes as operators write them: `4096`, `512K`, `512M`, `20G`, `1.5T` (powers of 1024).
public enum SizeParser {
    public static func parse(_ text: String) -> UInt64? {
        var digits = Substring(text.trimmingCharacters())
        var multiplier: Double = 1
        if let last = digits.last?.uppercased(), let unit = ["K": 1.0, "M": 2, "G": 3, "T": 4, "P": 5][last] {
            multiplier = pow1024(unit)
            digits = digits.dropLast()
        } else if digits.uppercased().hasSuffix("B"), digits.count > 1 {
            return parse(String(digits.dropLast()))
        }
        guard let value = Double(digits), value >= 0, value.isFinite else { return nil }
        return UInt64(value * multiplier)
    }

    private static func pow1024(_ n: Double) -> Double {
        var r = 1.0
        for _ in 0..<Int(n) { r *= 1024 }
        return r
    }

    /// `1.5 GiB`-style text for people.
    public static func format(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(bytes), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        if i == 0 { return "\(bytes) B" }
        let rounded = (v * 10).rounded() / 10
        return "\(rounded) \(units[i])"
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
