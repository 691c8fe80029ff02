/// One axis of a chart: the span of data values it shows, how values map onto it, and its ticks.
///
/// Linear axes tick at 1, 2 or 5 × 10^k steps. Logarithmic axes tick at powers of two when every
/// value is one (cache capacities usually are), else at 1-2-5 (or 1 to 9) of each decade, or at
/// every decade or every few decades when the span is wide.
struct AxisScale {
    let lower: Double
    let upper: Double
    let logarithmic: Bool
    let ticks: [Double]
    let labels: [String]

    /// Where `value` falls along the axis: 0 at `lower`, 1 at `upper`; nil where it cannot be shown
    /// (not finite, or not positive on a logarithmic axis).
    func fraction(_ value: Double) -> Double? {
        guard value.isFinite else { return nil }
        if logarithmic {
            guard value > 0 else { return nil }
            return (ChartMath.log2(value) - ChartMath.log2(lower)) / (ChartMath.log2(upper) - ChartMath.log2(lower))
        }
        return (value - lower) / (upper - lower)
    }

    /// A linear axis over `values`, or exactly over `fixed` when given, with at most `maxTicks`
    /// ticks where the data allow.
    static func linear(values: [Double], fixed: ClosedRange<Double>?, maxTicks: Int) -> AxisScale {
        var low: Double, high: Double
        if let fixed, fixed.lowerBound.isFinite, fixed.upperBound.isFinite {
            (low, high) = (fixed.lowerBound, fixed.upperBound)
        } else if let first = values.first {
            (low, high) = values.dropFirst().reduce((first, first)) { (min($0.0, $1), max($0.1, $1)) }
        } else {
            (low, high) = (0, 1)
        }
        // Spans beyond ±1e300 would overflow to infinity.
        let limit = ChartMath.limit
        (low, high) = (min(max(low, -limit), limit), min(max(high, -limit), limit))
        if low == high {
            let pad = low == 0 ? 1 : abs(low) * 0.1
            (low, high) = (low - pad, high + pad)
        }
        let isFixed = fixed != nil && fixed!.lowerBound.isFinite && fixed!.upperBound.isFinite && fixed!.lowerBound < fixed!.upperBound
        let step = niceStep(span: high - low, maxTicks: max(2, maxTicks))
        if !isFixed {
            low = (low / step.value).rounded(.down) * step.value
            high = (high / step.value).rounded(.up) * step.value
        }
        let first = Int((low / step.value - 1e-9).rounded(.up)), last = Int((high / step.value + 1e-9).rounded(.down))
        let ticks = first > last ? [] : (first...last).map { Double($0) * step.value }
        let decimals = max(0, -step.exponent)
        return AxisScale(lower: low, upper: high, logarithmic: false, ticks: ticks,
                         labels: ticks.map { ChartMath.format($0, decimals: decimals) })
    }

    /// A logarithmic axis over the positive values of `values`, with at most about `maxTicks` ticks.
    static func logarithmic(values: [Double], maxTicks: Int) -> AxisScale {
        let positive = values.filter { $0 >= 1 / ChartMath.limit && $0 <= ChartMath.limit }
        var low = positive.min() ?? 1, high = positive.max() ?? 10
        if low == high { (low, high) = (low / 2, high * 2) }
        let maxTicks = max(2, maxTicks)

        if positive.count > 0 && positive.allSatisfy({ $0.significand == 1 }) {
            // Powers of two: 2^e for every e, or every few e, enclosing the data.
            let e0 = low.exponent, e1 = high.exponent
            let every = max(1, (e1 - e0 + maxTicks) / maxTicks)
            let start = Int((Double(e0) / Double(every)).rounded(.down)) * every
            let end = Int((Double(e1) / Double(every)).rounded(.up)) * every
            let exponents = Array(stride(from: start, through: end, by: every))
            let ticks = exponents.map { ChartMath.power(2, $0) }
            return AxisScale(lower: ticks.first!, upper: ticks.last!, logarithmic: true, ticks: ticks,
                             labels: exponents.map { ChartMath.formatPowerOfTwo($0) })
        }

        let d0 = ChartMath.decade(of: low), d1 = ChartMath.decade(of: high) + 1
        let decades = d1 - d0
        let mantissas: [Double]
        var every = 1
        if high / low < 10 {
            mantissas = [1, 2, 3, 4, 5, 6, 7, 8, 9]
        } else if decades * 3 <= maxTicks + 1 {
            mantissas = [1, 2, 5]
        } else {
            mantissas = [1]
            every = max(1, (decades + maxTicks - 1) / maxTicks)
        }
        var candidates = [(value: Double, exponent: Int)]()
        var decade = Int((Double(d0) / Double(every)).rounded(.down)) * every
        while decade <= d1 {
            for m in mantissas { candidates.append((m * ChartMath.power(10, decade), decade)) }
            decade += every
        }
        // The axis runs from the last candidate at or below the data to the first at or above it.
        let startIndex = candidates.lastIndex { $0.value <= low * (1 + 1e-12) } ?? 0
        let endIndex = candidates.firstIndex { $0.value >= high * (1 - 1e-12) } ?? candidates.count - 1
        var chosen = Array(candidates[startIndex...endIndex])
        if mantissas.count == 9 && chosen.count > maxTicks {
            // A short span drawn small: keep 1, 2 and 5 of each decade, and the two ends.
            chosen = chosen.enumerated().filter { index, tick in
                index == 0 || index == chosen.count - 1 || [1, 2, 5].contains((tick.value / ChartMath.power(10, tick.exponent)).rounded())
            }.map { $0.element }
        }
        return AxisScale(lower: chosen.first!.value, upper: chosen.last!.value, logarithmic: true,
                         ticks: chosen.map { $0.value },
                         labels: chosen.map { ChartMath.format($0.value, decimals: max(0, -$0.exponent)) })
    }

    /// The smallest step of 1, 2 or 5 × 10^k that splits `span` into at most `maxTicks` intervals.
    static func niceStep(span: Double, maxTicks: Int) -> (value: Double, exponent: Int) {
        let rough = span / Double(maxTicks)
        var exponent = ChartMath.decade(of: rough)
        while true {
            let base = ChartMath.power(10, exponent)
            for m in [1.0, 2, 5] where span / (m * base) <= Double(maxTicks) + 1e-9 {
                return (m * base, exponent)
            }
            exponent += 1
        }
    }
}

/// Logarithms, powers and number text without Foundation or the C library.
enum ChartMath {
    static let ln2 = 0.693_147_180_559_945_3
    /// The largest magnitude an axis spans; beyond it, spans and powers would overflow.
    static let limit = 1e300

    /// log₂ of a positive finite `x`, good to about 1e-15.
    static func log2(_ x: Double) -> Double {
        precondition(x > 0 && x.isFinite)
        let m = x.significand   // in [1, 2)
        // ln m = 2 atanh z with z = (m-1)/(m+1) ≤ 1/3, so the series gains a factor 9 a term.
        let z = (m - 1) / (m + 1), z2 = z * z
        var term = z, sum = 0.0
        for k in 0..<20 {
            sum += term / Double(2 * k + 1)
            term *= z2
        }
        return Double(x.exponent) + 2 * sum / ln2
    }

    /// `base` raised to the integer power `exponent`.
    static func power(_ base: Double, _ exponent: Int) -> Double {
        var result = 1.0
        for _ in 0..<abs(exponent) { result *= base }
        return exponent < 0 ? 1 / result : result
    }

    /// The k with 10^k ≤ x < 10^(k+1), for positive finite x.
    static func decade(of x: Double) -> Int {
        precondition(x > 0 && x.isFinite)
        var k = Int((log2(x) * 0.301_029_995_663_981_2).rounded(.down))
        // Rounding in log2 can land one off at exact powers of ten.
        if power(10, k) > x { k -= 1 }
        if power(10, k + 1) <= x { k += 1 }
        return k
    }

    /// `value` with `decimals` digits after the point; exponent form (`2.5e9`) for magnitudes from
    /// 10^9 or, when nonzero, below 10^-6.
    static func format(_ value: Double, decimals: Int) -> String {
        guard value.isFinite else { return value.isNaN ? "nan" : (value < 0 ? "-inf" : "inf") }
        let magnitude = abs(value)
        if magnitude >= 1e9 || (magnitude != 0 && magnitude < 1e-6) {
            let k = decade(of: magnitude)
            let mantissa = value / power(10, k)
            var text = format(mantissa, decimals: 2)
            while text.hasSuffix("0") { text.removeLast() }
            if text.hasSuffix(".") { text.removeLast() }
            return text + "e" + String(k)
        }
        let scaled = (magnitude * power(10, decimals)).rounded()
        var digits = String(UInt64(scaled))
        if decimals > 0 {
            if digits.count <= decimals { digits = String(repeating: "0", count: decimals - digits.count + 1) + digits }
            digits.insert(".", at: digits.index(digits.endIndex, offsetBy: -decimals))
        }
        return (value < 0 && scaled != 0 ? "-" : "") + digits
    }

    /// 2^e as text: whole numbers below a million, exact fractions to 1/1024, `2^e` beyond.
    static func formatPowerOfTwo(_ e: Int) -> String {
        if e >= 0 && e < 20 { return String(1 << e) }
        if e < 0 && e >= -10 { return format(power(2, e), decimals: -e) }
        return "2^" + String(e)
    }
}
