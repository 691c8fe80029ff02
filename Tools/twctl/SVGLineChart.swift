import Foundation

/// A line chart as SVG text (the planner's plot): axes with ticks, one polyline per series, a legend.
/// Text, not pixels: no font or image encoder to carry, a few kilobytes, opened by any browser.
struct SVGLineChart {
    struct Series {
        var name: String
        var points: [(x: Double, y: Double)]
        var dashed = false
    }

    var title: String
    var xLabel: String
    var yLabel: String
    var series: [Series]
    var logScaleX = false
    var yRange: ClosedRange<Double>? = nil
    var width = 900.0
    var height = 560.0

    static let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    func render() -> String {
        let left = 70.0, right = 200.0, top = 50.0, bottom = 60.0
        let plotW = width - left - right, plotH = height - top - bottom
        let xs = series.flatMap { $0.points.map(\.x) }.filter { !logScaleX || $0 > 0 }
        let ys = series.flatMap { $0.points.map(\.y) }
        let tx = { (v: Double) in logScaleX ? log10(max(v, 1e-12)) : v }
        var xMin = tx(xs.min() ?? 0), xMax = tx(xs.max() ?? 1)
        if xMax <= xMin { xMax = xMin + 1 }
        if logScaleX { xMin = floor(xMin); xMax = ceil(xMax) }
        let yMin = yRange?.lowerBound ?? (ys.min() ?? 0), yMax = max(yRange?.upperBound ?? (ys.max() ?? 1), yMin + 1e-9)
        func px(_ x: Double) -> Double { left + (tx(x) - xMin) / (xMax - xMin) * plotW }
        func py(_ y: Double) -> Double { top + plotH - (y - yMin) / (yMax - yMin) * plotH }
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
        }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }

        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        out += "<text x=\"\(f(width / 2))\" y=\"28\" text-anchor=\"middle\" font-size=\"15\">\(esc(title))</text>\n"
        out += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" fill=\"none\" stroke=\"#333\"/>\n"
        // Y ticks: five divisions.
        for i in 0...5 {
            let v = yMin + (yMax - yMin) * Double(i) / 5
            let y = py(v)
            out += "<line x1=\"\(f(left))\" x2=\"\(f(left + plotW))\" y1=\"\(f(y))\" y2=\"\(f(y))\" stroke=\"#ddd\"/>\n"
            out += "<text x=\"\(f(left - 8))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(String(format: "%.2f", v))</text>\n"
        }
        // X ticks: decades on a log scale, five divisions otherwise.
        let ticks: [Double] = logScaleX ? stride(from: xMin, through: xMax, by: 1).map { pow(10, $0) }
            : (0...5).map { xMin + (xMax - xMin) * Double($0) / 5 }
        for v in ticks {
            let x = px(v)
            out += "<line x1=\"\(f(x))\" x2=\"\(f(x))\" y1=\"\(f(top))\" y2=\"\(f(top + plotH))\" stroke=\"#eee\"/>\n"
            out += "<text x=\"\(f(x))\" y=\"\(f(top + plotH + 18))\" text-anchor=\"middle\">\(v >= 100 ? String(format: "%.0f", v) : String(format: "%g", v))</text>\n"
        }
        out += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(height - 18))\" text-anchor=\"middle\">\(esc(xLabel))</text>\n"
        out += "<text transform=\"translate(18,\(f(top + plotH / 2))) rotate(-90)\" text-anchor=\"middle\">\(esc(yLabel))</text>\n"
        for (i, s) in series.enumerated() {
            let color = Self.colors[i % Self.colors.count]
            let points = s.points.filter { !logScaleX || $0.x > 0 }.map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
            out += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"\(s.dashed ? " stroke-dasharray=\"6,4\"" : "") points=\"\(points)\"/>\n"
            let ly = top + 16 + Double(i) * 20
            out += "<line x1=\"\(f(left + plotW + 14))\" x2=\"\(f(left + plotW + 40))\" y1=\"\(f(ly))\" y2=\"\(f(ly))\" stroke=\"\(color)\" stroke-width=\"2\"\(s.dashed ? " stroke-dasharray=\"6,4\"" : "")/>\n"
            out += "<text x=\"\(f(left + plotW + 46))\" y=\"\(f(ly + 4))\">\(esc(s.name))</text>\n"
        }
        return out + "</svg>\n"
    }
}
