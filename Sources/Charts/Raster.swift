/// An 8-bit RGB colour.
public struct ChartColour: Hashable, Sendable {
    public var red: UInt8
    public var green: UInt8
    public var blue: UInt8

    /// A colour from its three channels.
    public init(red: UInt8, green: UInt8, blue: UInt8) {
        self.red = red
        self.green = green
        self.blue = blue
    }

    public static let white = ChartColour(red: 255, green: 255, blue: 255)
    public static let black = ChartColour(red: 0, green: 0, blue: 0)
}

/// A rectangle of whole pixels: columns `x..<x+width`, rows `y..<y+height`.
struct PixelRect: Equatable {
    var x: Int
    var y: Int
    var width: Int
    var height: Int

    var maxX: Int { x + width }
    var maxY: Int { y + height }

    /// This rectangle grown by `amount` pixels on every side (shrunk where negative).
    func outset(by amount: Int) -> PixelRect {
        PixelRect(x: x - amount, y: y - amount, width: max(0, width + 2 * amount), height: max(0, height + 2 * amount))
    }

    func intersection(_ other: PixelRect) -> PixelRect {
        let left = max(x, other.x), top = max(y, other.y)
        let right = min(maxX, other.maxX), bottom = min(maxY, other.maxY)
        return PixelRect(x: left, y: top, width: max(0, right - left), height: max(0, bottom - top))
    }

    func contains(x px: Double, y py: Double) -> Bool {
        px >= Double(x) && px < Double(maxX) && py >= Double(y) && py < Double(maxY)
    }
}

/// A point in continuous pixel space: pixel (i, j) covers [i, i+1) × [j, j+1).
struct PixelPoint: Equatable {
    var x: Double
    var y: Double
}

/// Shapes that mark data points, so that series stay apart without colour.
enum MarkerShape: CaseIterable {
    case circle, square, diamond, triangleUp, triangleDown, cross

    /// Whether offset (dx, dy), in units of the marker radius with y growing downwards, is inside.
    func contains(dx: Double, dy: Double) -> Bool {
        switch self {
        case .circle: return dx * dx + dy * dy <= 1
        case .square: return abs(dx) <= 0.85 && abs(dy) <= 0.85
        case .diamond: return abs(dx) + abs(dy) <= 1.15
        case .triangleUp: return dy <= 0.8 && dy >= -1 && abs(dx) <= (dy + 1) * 0.58
        case .triangleDown: return dy >= -0.8 && dy <= 1 && abs(dx) <= (1 - dy) * 0.58
        case .cross:
            let arm = 0.3
            return (abs(dx) <= arm && abs(dy) <= 1) || (abs(dy) <= arm && abs(dx) <= 1)
        }
    }
}

/// How much of each pixel of a region a shape covers, 0...255; shapes added take the maximum, so
/// overlapping strokes of one series composite once without darkening their joints.
struct CoverageMask {
    let bounds: PixelRect
    private(set) var coverage: [UInt8]

    init(bounds: PixelRect) {
        self.bounds = bounds
        coverage = [UInt8](repeating: 0, count: bounds.width * bounds.height)
    }

    private mutating func cover(_ px: Int, _ py: Int, _ amount: Double) {
        guard amount > 0 else { return }
        let index = (py - bounds.y) * bounds.width + (px - bounds.x)
        let value = UInt8(min(255, (amount * 255).rounded()))
        if value > coverage[index] { coverage[index] = value }
    }

    /// Adds a segment `width` pixels wide with round ends, anti-aliased over one pixel.
    mutating func addSegment(from start: PixelPoint, to end: PixelPoint, width: Double) {
        let radius = width / 2
        guard let (a, b) = clip(start, end, to: bounds.outset(by: Int(radius) + 2)) else { return }
        // Long segments go in short pieces so that each piece's bounding box stays small.
        let length = ((b.x - a.x) * (b.x - a.x) + (b.y - a.y) * (b.y - a.y)).squareRoot()
        let pieces = max(1, Int((length / 24).rounded(.up)))
        for piece in 0..<pieces {
            let t0 = Double(piece) / Double(pieces), t1 = Double(piece + 1) / Double(pieces)
            let p = PixelPoint(x: a.x + (b.x - a.x) * t0, y: a.y + (b.y - a.y) * t0)
            let q = PixelPoint(x: a.x + (b.x - a.x) * t1, y: a.y + (b.y - a.y) * t1)
            addPiece(p, q, radius: radius)
        }
    }

    private mutating func addPiece(_ p: PixelPoint, _ q: PixelPoint, radius: Double) {
        let reach = radius + 1
        let left = Int((min(p.x, q.x) - reach).rounded(.down)), top = Int((min(p.y, q.y) - reach).rounded(.down))
        let right = Int((max(p.x, q.x) + reach).rounded(.up)), bottom = Int((max(p.y, q.y) + reach).rounded(.up))
        let box = PixelRect(x: left, y: top, width: right - left, height: bottom - top).intersection(bounds)
        let dx = q.x - p.x, dy = q.y - p.y
        let lengthSquared = dx * dx + dy * dy
        for py in box.y..<box.maxY {
            for px in box.x..<box.maxX {
                let cx = Double(px) + 0.5, cy = Double(py) + 0.5
                var t = lengthSquared > 0 ? ((cx - p.x) * dx + (cy - p.y) * dy) / lengthSquared : 0
                t = min(1, max(0, t))
                let ex = cx - (p.x + t * dx), ey = cy - (p.y + t * dy)
                let distance = (ex * ex + ey * ey).squareRoot()
                cover(px, py, min(1, radius + 0.5 - distance))
            }
        }
    }

    /// Adds a filled marker centred on `centre`, anti-aliased by 4×4 supersampling.
    mutating func addMarker(_ shape: MarkerShape, at centre: PixelPoint, radius: Double) {
        guard bounds.outset(by: Int(radius) + 1).contains(x: centre.x, y: centre.y) else { return }
        let left = Int((centre.x - radius - 1).rounded(.down)), top = Int((centre.y - radius - 1).rounded(.down))
        let right = Int((centre.x + radius + 1).rounded(.up)), bottom = Int((centre.y + radius + 1).rounded(.up))
        let box = PixelRect(x: left, y: top, width: right - left, height: bottom - top).intersection(bounds)
        for py in box.y..<box.maxY {
            for px in box.x..<box.maxX {
                var inside = 0
                for sy in 0..<4 {
                    for sx in 0..<4 {
                        let dx = (Double(px) + (Double(sx) + 0.5) / 4 - centre.x) / radius
                        let dy = (Double(py) + (Double(sy) + 0.5) / 4 - centre.y) / radius
                        if shape.contains(dx: dx, dy: dy) { inside += 1 }
                    }
                }
                cover(px, py, Double(inside) / 16)
            }
        }
    }

    /// Clips segment a-b to `rect` (Liang-Barsky); nil when no part of it lies inside.
    private func clip(_ a: PixelPoint, _ b: PixelPoint, to rect: PixelRect) -> (PixelPoint, PixelPoint)? {
        guard a.x.isFinite && a.y.isFinite && b.x.isFinite && b.y.isFinite else { return nil }
        let dx = b.x - a.x, dy = b.y - a.y
        var t0 = 0.0, t1 = 1.0
        let edges: [(Double, Double)] = [
            (-dx, a.x - Double(rect.x)), (dx, Double(rect.maxX) - a.x),
            (-dy, a.y - Double(rect.y)), (dy, Double(rect.maxY) - a.y),
        ]
        for (p, q) in edges {
            if p == 0 {
                if q < 0 { return nil }
            } else {
                let r = q / p
                if p < 0 { t0 = max(t0, r) } else { t1 = min(t1, r) }
            }
        }
        guard t0 <= t1 else { return nil }
        return (PixelPoint(x: a.x + t0 * dx, y: a.y + t0 * dy), PixelPoint(x: a.x + t1 * dx, y: a.y + t1 * dy))
    }
}

/// An RGB image in memory, rows top first, 3 bytes a pixel. Drawing outside the image is clipped.
struct Raster {
    let width: Int
    let height: Int
    private(set) var bytes: [UInt8]

    init(width: Int, height: Int, background: ChartColour) {
        self.width = width
        self.height = height
        bytes = [UInt8](repeating: 0, count: width * height * 3)
        fill(PixelRect(x: 0, y: 0, width: width, height: height), background)
    }

    var bounds: PixelRect { PixelRect(x: 0, y: 0, width: width, height: height) }

    subscript(x: Int, y: Int) -> ChartColour {
        let i = (y * width + x) * 3
        return ChartColour(red: bytes[i], green: bytes[i + 1], blue: bytes[i + 2])
    }

    mutating func set(_ x: Int, _ y: Int, _ colour: ChartColour) {
        guard x >= 0 && x < width && y >= 0 && y < height else { return }
        let i = (y * width + x) * 3
        bytes[i] = colour.red
        bytes[i + 1] = colour.green
        bytes[i + 2] = colour.blue
    }

    mutating func fill(_ rect: PixelRect, _ colour: ChartColour) {
        let r = rect.intersection(bounds)
        for y in r.y..<r.maxY { for x in r.x..<r.maxX { set(x, y, colour) } }
    }

    /// A one-pixel outline just inside `rect`.
    mutating func outline(_ rect: PixelRect, _ colour: ChartColour) {
        fill(PixelRect(x: rect.x, y: rect.y, width: rect.width, height: 1), colour)
        fill(PixelRect(x: rect.x, y: rect.maxY - 1, width: rect.width, height: 1), colour)
        fill(PixelRect(x: rect.x, y: rect.y, width: 1, height: rect.height), colour)
        fill(PixelRect(x: rect.maxX - 1, y: rect.y, width: 1, height: rect.height), colour)
    }

    /// Paints `colour` through `mask`: full coverage gives exactly `colour`, partial blends.
    mutating func composite(_ mask: CoverageMask, _ colour: ChartColour) {
        let r = mask.bounds.intersection(bounds)
        for y in r.y..<r.maxY {
            for x in r.x..<r.maxX {
                let alpha = Int(mask.coverage[(y - mask.bounds.y) * mask.bounds.width + (x - mask.bounds.x)])
                guard alpha > 0 else { continue }
                let old = self[x, y]
                func mix(_ new: UInt8, _ old: UInt8) -> UInt8 {
                    UInt8((Int(new) * alpha + Int(old) * (255 - alpha) + 127) / 255)
                }
                set(x, y, ChartColour(red: mix(colour.red, old.red), green: mix(colour.green, old.green),
                                      blue: mix(colour.blue, old.blue)))
            }
        }
    }

    /// Draws `text` with its top-left corner at (x, y), each font pixel `scale` pixels square.
    /// Vertical text reads bottom to top (turned 90° anticlockwise) and starts at the bottom-left,
    /// (x, y) being then the bottom-left corner.
    mutating func draw(_ text: String, x: Int, y: Int, scale: Int, colour: ChartColour, vertical: Bool = false) {
        var pen = 0
        for scalar in text.unicodeScalars {
            let rows = BitmapFont.rows(for: scalar)
            for (row, bits) in rows.enumerated() where bits != 0 {
                for column in 0..<BitmapFont.glyphWidth where bits & (1 << (BitmapFont.glyphWidth - 1 - column)) != 0 {
                    let u = (pen + column) * scale, v = row * scale
                    let cell = vertical
                        ? PixelRect(x: x + v, y: y - u - scale, width: scale, height: scale)
                        : PixelRect(x: x + u, y: y + v, width: scale, height: scale)
                    fill(cell, colour)
                }
            }
            pen += BitmapFont.advance
        }
    }
}
