/// One named line of a chart: points joined in the order given.
///
/// Points whose x or y is not finite (NaN, ±∞), or whose x is not positive on a logarithmic x axis,
/// are not drawn and break the line into separate runs.
public struct ChartSeries: Sendable {
    public var name: String
    public var points: [(x: Double, y: Double)]

    /// A series named `name` (shown in the legend) through `points`.
    public init(name: String, points: [(x: Double, y: Double)]) {
        self.name = name
        self.points = points
    }
}

/// A line chart rendered to PNG without Foundation or C libraries: white background, framed plot
/// with grid, ticks and numeric tick labels, axis labels, title, and a legend placed where it
/// covers the fewest data (outside on the right when every corner of the plot is taken).
///
/// Series are told apart by colour (`palette`, 8 colours, then repeating) and by marker shape
/// (6 shapes, then repeating); lines are 2 px wide. Text uses a built-in 5×9 ASCII bitmap font,
/// scaled 2× from 700×400 up (3× from 1050×600); other characters show as `?`. A value type; rendering reads only
/// the chart, so it is safe from any thread.
///
/// ```swift
/// let png = LineChart(title: "Hit ratio", xLabel: "NVMe GiB", yLabel: "hit ratio",
///                     series: [ChartSeries(name: "DRAM 1 GiB", points: [(64, 0.41), (128, 0.58)])],
///                     logScaleX: true, yRange: 0...1).renderPNG()
/// ```
public struct LineChart: Sendable {
    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [ChartSeries]
    /// Whether x is drawn on a logarithmic scale (for capacities that span decades).
    public var logScaleX: Bool
    /// The y span shown; nil takes it from the data, rounded out to whole ticks.
    public var yRange: ClosedRange<Double>?

    /// A chart of `series`; every text may be empty, and then takes no room.
    public init(title: String = "", xLabel: String = "", yLabel: String = "", series: [ChartSeries] = [],
                logScaleX: Bool = false, yRange: ClosedRange<Double>? = nil) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.series = series
        self.logScaleX = logScaleX
        self.yRange = yRange
    }

    /// Series colours, in order; series 8 and on reuse them with other marker shapes.
    public static let palette: [ChartColour] = [
        ChartColour(red: 31, green: 119, blue: 180),   // blue
        ChartColour(red: 235, green: 120, blue: 10),   // orange
        ChartColour(red: 40, green: 155, blue: 40),    // green
        ChartColour(red: 210, green: 35, blue: 40),    // red
        ChartColour(red: 145, green: 95, blue: 190),   // purple
        ChartColour(red: 140, green: 85, blue: 70),    // brown
        ChartColour(red: 225, green: 90, blue: 180),   // pink
        ChartColour(red: 0, green: 160, blue: 170),    // teal
    ]

    /// The colour series `index` is drawn in.
    public static func colour(forSeriesAt index: Int) -> ChartColour { palette[index % palette.count] }

    /// Renders the chart as a PNG file (8-bit RGB).
    /// - Parameters:
    ///   - width: Image width in pixels; at least 1. Layout is meant for 300 and up.
    ///   - height: Image height in pixels; at least 1. Layout is meant for 200 and up.
    /// - Returns: The bytes of the PNG file.
    public func renderPNG(width: Int = 900, height: Int = 560) -> [UInt8] {
        let (raster, _) = render(width: width, height: height)
        return PNGEncoder.encode(rgb: raster.bytes, width: width, height: height)
    }

    // MARK: - Rendering

    static let background = ChartColour.white
    static let textColour = ChartColour(red: 30, green: 30, blue: 30)
    static let frameColour = ChartColour(red: 90, green: 90, blue: 90)
    static let gridColour = ChartColour(red: 228, green: 228, blue: 228)
    static let legendBorder = ChartColour(red: 190, green: 190, blue: 190)
    static let lineWidth = 2.0

    /// The image and where everything went in it.
    func render(width: Int, height: Int) -> (Raster, ChartLayout) {
        precondition(width >= 1 && height >= 1, "chart size \(width)x\(height) must be at least 1x1")
        var layout = ChartLayout(chart: self, width: width, height: height, legendOutside: false)
        if layout.legendCollides {
            let outside = ChartLayout(chart: self, width: width, height: height, legendOutside: true)
            if outside.plot.width >= width / 2 { layout = outside }
        }
        var raster = Raster(width: width, height: height, background: Self.background)
        drawAxes(layout, on: &raster)
        drawTexts(layout, on: &raster)
        for index in series.indices { drawSeries(index, layout, on: &raster) }
        if let legend = layout.legend { drawLegend(legend, layout, on: &raster) }
        return (raster, layout)
    }

    private func drawAxes(_ layout: ChartLayout, on raster: inout Raster) {
        let plot = layout.plot, s = layout.scale
        let tickLength = ChartLayout.tickLength(s), gap = ChartLayout.labelGap(s)
        for (tick, label) in zip(layout.x.ticks, layout.x.labels) {
            guard let f = layout.x.fraction(tick) else { continue }
            let px = plot.x + Int((f * Double(plot.width - 1)).rounded())
            raster.fill(PixelRect(x: px, y: plot.y, width: 1, height: plot.height), Self.gridColour)
            raster.fill(PixelRect(x: px, y: plot.maxY, width: 1, height: tickLength), Self.frameColour)
            let w = BitmapFont.width(of: label, scale: s)
            raster.draw(label, x: px - w / 2, y: plot.maxY + tickLength + gap, scale: s, colour: Self.textColour)
        }
        for (tick, label) in zip(layout.y.ticks, layout.y.labels) {
            guard let f = layout.y.fraction(tick) else { continue }
            let py = plot.maxY - 1 - Int((f * Double(plot.height - 1)).rounded())
            raster.fill(PixelRect(x: plot.x, y: py, width: plot.width, height: 1), Self.gridColour)
            raster.fill(PixelRect(x: plot.x - tickLength, y: py, width: tickLength, height: 1), Self.frameColour)
            let w = BitmapFont.width(of: label, scale: s)
            raster.draw(label, x: plot.x - tickLength - gap - w, y: py - BitmapFont.ascent * s / 2,
                        scale: s, colour: Self.textColour)
        }
        raster.outline(plot.outset(by: 1), Self.frameColour)
    }

    private func drawTexts(_ layout: ChartLayout, on raster: inout Raster) {
        let plot = layout.plot, s = layout.scale, pad = ChartLayout.padding(s)
        if !title.isEmpty {
            let titleScale = layout.titleScale, bold = titleScale == s
            let w = BitmapFont.width(of: title, scale: titleScale) + (bold ? 1 : 0)
            let x = max(pad, min(raster.width - pad - w, plot.x + (plot.width - w) / 2))
            raster.draw(title, x: x, y: pad, scale: titleScale, colour: Self.textColour)
            // Bold at the body size: the same text again one pixel to the right.
            if bold { raster.draw(title, x: x + 1, y: pad, scale: titleScale, colour: Self.textColour) }
        }
        if !xLabel.isEmpty {
            let w = BitmapFont.width(of: xLabel, scale: s)
            raster.draw(xLabel, x: plot.x + (plot.width - w) / 2, y: raster.height - pad - BitmapFont.glyphHeight * s,
                        scale: s, colour: Self.textColour)
        }
        if !yLabel.isEmpty {
            let w = BitmapFont.width(of: yLabel, scale: s)
            raster.draw(yLabel, x: pad, y: plot.y + (plot.height + w) / 2, scale: s, colour: Self.textColour,
                        vertical: true)
        }
    }

    private func drawSeries(_ index: Int, _ layout: ChartLayout, on raster: inout Raster) {
        let clip = layout.plot.outset(by: Int(layout.markerRadius) + 2).intersection(raster.bounds)
        var mask = CoverageMask(bounds: clip)
        let runs = layout.runs[index]
        for run in runs {
            for (a, b) in zip(run, run.dropFirst()) { mask.addSegment(from: a, to: b, width: Self.lineWidth) }
        }
        let count = runs.reduce(0) { $0 + $1.count }
        if count > 0 && Double(count) * layout.markerRadius * 3 <= Double(layout.plot.width) {
            let shape = ChartLayout.markerShape(index)
            for point in runs.joined() { mask.addMarker(shape, at: point, radius: layout.markerRadius) }
        }
        raster.composite(mask, Self.colour(forSeriesAt: index))
    }

    private func drawLegend(_ box: PixelRect, _ layout: ChartLayout, on raster: inout Raster) {
        let s = layout.scale, pad = ChartLayout.padding(s) / 2
        raster.fill(box, Self.background)
        raster.outline(box, Self.legendBorder)
        for (index, entry) in series.enumerated() {
            let rowTop = box.y + pad + index * ChartLayout.legendRowHeight(s)
            let midY = Double(rowTop) + Double(BitmapFont.ascent * s) / 2
            let sampleLeft = Double(box.x + pad), sampleRight = sampleLeft + Double(ChartLayout.legendSampleLength(s))
            var mask = CoverageMask(bounds: box)
            mask.addSegment(from: PixelPoint(x: sampleLeft, y: midY), to: PixelPoint(x: sampleRight, y: midY),
                            width: Self.lineWidth)
            mask.addMarker(ChartLayout.markerShape(index), at: PixelPoint(x: (sampleLeft + sampleRight) / 2, y: midY),
                           radius: layout.markerRadius)
            raster.composite(mask, Self.colour(forSeriesAt: index))
            raster.draw(entry.name, x: Int(sampleRight) + ChartLayout.labelGap(s) * 2, y: rowTop, scale: s,
                        colour: Self.textColour)
        }
    }
}

/// Where the parts of a chart go in an image of a given size, and the series in pixel space.
struct ChartLayout {
    /// Font scale of all text but the title.
    let scale: Int
    /// Font scale of the title: the body's, drawn bold, or 2 where the body is at 1 and it fits.
    let titleScale: Int
    let plot: PixelRect
    let x: AxisScale
    let y: AxisScale
    let legend: PixelRect?
    /// Whether the legend, inside the plot, still covers data in its best corner.
    let legendCollides: Bool
    let markerRadius: Double
    /// For each series, its runs of drawable points in pixel space.
    let runs: [[[PixelPoint]]]

    static func padding(_ s: Int) -> Int { 6 * s }
    static func tickLength(_ s: Int) -> Int { 3 * s }
    static func labelGap(_ s: Int) -> Int { 2 * s }
    static func legendRowHeight(_ s: Int) -> Int { (BitmapFont.glyphHeight + 2) * s }
    static func legendSampleLength(_ s: Int) -> Int { 12 * s }
    static func markerShape(_ index: Int) -> MarkerShape { MarkerShape.allCases[index % MarkerShape.allCases.count] }

    init(chart: LineChart, width: Int, height: Int, legendOutside: Bool) {
        let s = max(1, min(width / 350, height / 200))
        scale = s
        let fitsDoubled = BitmapFont.width(of: chart.title, scale: 2) <= width - 2 * Self.padding(1)
        titleScale = s == 1 && fitsDoubled ? 2 : s
        markerRadius = 1.5 + 1.25 * Double(s)
        let pad = Self.padding(s), fontHeight = BitmapFont.glyphHeight * s
        let tickBand = Self.tickLength(s) + Self.labelGap(s)

        // Only points that can be drawn decide the axes.
        let usable = chart.series.map { series in
            series.points.map { p -> (x: Double, y: Double)? in
                guard p.x.isFinite && p.y.isFinite && (!chart.logScaleX || p.x > 0) else { return nil }
                return p
            }
        }
        let xs = usable.joined().compactMap { $0?.x }, ys = usable.joined().compactMap { $0?.y }

        let top = pad + (chart.title.isEmpty ? fontHeight / 2 : BitmapFont.glyphHeight * titleScale + pad)
        let bottom = tickBand + fontHeight + (chart.xLabel.isEmpty ? 0 : pad + fontHeight) + pad
        let plotHeight = max(1, height - top - bottom)
        let yAxis = AxisScale.linear(values: ys, fixed: chart.yRange, maxTicks: plotHeight / (fontHeight * 3))
        let yLabelWidth = yAxis.labels.map { BitmapFont.width(of: $0, scale: s) }.max() ?? 0
        let left = pad + (chart.yLabel.isEmpty ? 0 : fontHeight + pad) + yLabelWidth + tickBand

        let legendSize = chart.series.isEmpty ? nil : (
            width: 2 * (pad / 2) + Self.legendSampleLength(s) + 4 * s
                + (chart.series.map { BitmapFont.width(of: $0.name, scale: s) }.max() ?? 0),
            height: 2 * (pad / 2) + chart.series.count * Self.legendRowHeight(s) - 2 * s)
        // Room on the right for half of the last x tick label, or for the legend.
        var right = pad + 3 * BitmapFont.advance * s
        if legendOutside, let legendSize { right = max(right, legendSize.width + 2 * pad) }
        let plotWidth = max(1, width - left - right)
        // The most ticks whose labels keep two characters apart where ticks are closest.
        var maxTicks = plotWidth / (3 * BitmapFont.advance * s)
        var xAxis: AxisScale
        repeat {
            xAxis = chart.logScaleX
                ? AxisScale.logarithmic(values: xs, maxTicks: maxTicks)
                : AxisScale.linear(values: xs, fixed: nil, maxTicks: maxTicks)
            let fractions = xAxis.ticks.compactMap { xAxis.fraction($0) }
            let closest = zip(fractions, fractions.dropFirst()).map { ($1 - $0) * Double(plotWidth) }.min() ?? .infinity
            let widest = xAxis.labels.map { BitmapFont.width(of: $0, scale: s) }.max() ?? 0
            if closest >= Double(widest + 2 * BitmapFont.advance * s) { break }
            maxTicks -= 1
        } while maxTicks >= 2
        let plot = PixelRect(x: left, y: top, width: plotWidth, height: plotHeight)
        self.plot = plot
        x = xAxis
        y = yAxis

        runs = usable.map { points in
            var runs = [[PixelPoint]](), current = [PixelPoint]()
            for point in points {
                if let point, let fx = xAxis.fraction(point.x), let fy = yAxis.fraction(point.y) {
                    current.append(Self.position(fx, fy, in: plot))
                } else if !current.isEmpty {
                    runs.append(current)
                    current = []
                }
            }
            if !current.isEmpty { runs.append(current) }
            return runs
        }

        guard let legendSize else {
            legend = nil
            legendCollides = false
            return
        }
        if legendOutside {
            legend = PixelRect(x: plot.maxX + pad, y: plot.y, width: legendSize.width, height: legendSize.height)
            legendCollides = false
            return
        }
        let inset = pad
        let corners = [
            PixelRect(x: plot.maxX - inset - legendSize.width, y: plot.y + inset, width: legendSize.width, height: legendSize.height),
            PixelRect(x: plot.maxX - inset - legendSize.width, y: plot.maxY - inset - legendSize.height, width: legendSize.width, height: legendSize.height),
            PixelRect(x: plot.x + inset, y: plot.y + inset, width: legendSize.width, height: legendSize.height),
            PixelRect(x: plot.x + inset, y: plot.maxY - inset - legendSize.height, width: legendSize.width, height: legendSize.height),
        ]
        let samples = Self.samples(of: runs), reach = Int(markerRadius) + 2
        let scores = corners.map { corner in
            let area = corner.outset(by: reach)
            return samples.reduce(0) { $0 + (area.contains(x: $1.x, y: $1.y) ? 1 : 0) }
        }
        let best = scores.indices.min { scores[$0] < scores[$1] }!
        legend = corners[best]
        legendCollides = scores[best] > 0
    }

    /// The pixel position of data point (x, y), or nil where it cannot be drawn.
    func position(x dataX: Double, y dataY: Double) -> PixelPoint? {
        guard let fx = x.fraction(dataX), let fy = y.fraction(dataY) else { return nil }
        return Self.position(fx, fy, in: plot)
    }

    /// Fractions 0...1 along the axes land on the centres of the plot's first and last pixels.
    private static func position(_ fx: Double, _ fy: Double, in plot: PixelRect) -> PixelPoint {
        PixelPoint(x: Double(plot.x) + 0.5 + fx * Double(plot.width - 1),
                   y: Double(plot.maxY) - 0.5 - fy * Double(plot.height - 1))
    }

    /// Points every 2 px along every run, for measuring what a legend box would cover.
    private static func samples(of runs: [[[PixelPoint]]]) -> [PixelPoint] {
        var out = [PixelPoint]()
        for run in runs.joined() {
            out.append(contentsOf: run.prefix(1))
            for (a, b) in zip(run, run.dropFirst()) {
                let length = ((b.x - a.x) * (b.x - a.x) + (b.y - a.y) * (b.y - a.y)).squareRoot()
                guard length.isFinite else { continue }
                let steps = Int(min(4096, max(1, length / 2)))
                for i in 1...steps {
                    let t = Double(i) / Double(steps)
                    out.append(PixelPoint(x: a.x + (b.x - a.x) * t, y: a.y + (b.y - a.y) * t))
                }
            }
        }
        return out
    }
}
