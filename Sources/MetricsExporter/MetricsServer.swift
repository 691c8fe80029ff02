import DequeModule
import Platform
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A small HTTP/1.1 server for Prometheus scrapes: `GET /metrics` answers the exposition text, any
/// other path 404. A listening thread hands connections to a few handler threads; each request has a
/// deadline (a client that sends slowly or not at all is cut off), so several scrapers are served and
/// a slow one cannot hold the others. Binds loopback unless an address is given.
///
/// Thread-safety: `start` and `stop` from the owner; the handlers only call `render`, which must be
/// safe from any thread.
public final class MetricsServer: Sendable {
    public let host: String
    public let port: UInt16
    /// Whether the address is reachable from other machines (the daemon warns about it).
    public let isPublic: Bool
    private let listener: TCPListener
    private let render: @Sendable () -> [UInt8]
    private let threads = Mutex<[BackgroundThread]>([])
    private let queue = Mutex<(fds: Deque<Int32>, stopping: Bool)>((Deque(), false))
    private let ready = ConditionLock()
    /// Seconds a client has to send its request and read the answer.
    public static let deadlineSeconds = 2
    static let handlers = 4
    static let backlog = 64

    /// Binds `address`: "PORT" or ":PORT" (loopback), "HOST:PORT" (IPv4; "0.0.0.0:PORT" for every interface).
    public init(address: String, render: @escaping @Sendable () -> [UInt8]) throws {
        let parts = address.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        let hostText: String, portText: String
        switch parts.count {
        case 1: (hostText, portText) = ("", parts[0])
        case 2: (hostText, portText) = (parts[0], parts[1])
        default: throw MetricsAddressError("--metrics wants PORT or HOST:PORT (IPv4), not '\(address)'")
        }
        guard let port = UInt16(portText) else { throw MetricsAddressError("--metrics: '\(portText)' is not a port (0 to 65535)") }
        let host = hostText.isEmpty || hostText == "localhost" ? "127.0.0.1" : hostText
        do { listener = try TCPListener(host: host, port: port) } catch {
            throw MetricsAddressError("--metrics \(address): cannot listen (\(error)); choose another port or address")
        }
        self.host = host
        self.port = listener.port
        isPublic = !host.hasPrefix("127.")
        self.render = render
    }

    public func start() {
        var started = [BackgroundThread(name: "tw-metrics") { [self] in acceptLoop() }]
        for i in 0..<Self.handlers { started.append(BackgroundThread(name: "tw-metrics\(i)") { [self] in handle() }) }
        threads.withLock { $0 = started }
    }

    public func stop() {
        listener.shutdown()
        ready.withLock {
            queue.withLock { $0.stopping = true }
            ready.broadcast()
        }
        let all = threads.withLock { t -> [BackgroundThread] in
            defer { t = [] }
            return t
        }
        for t in all { t.join() }
        queue.withLock { q in
            for fd in q.fds { close(fd) }
            q.fds.removeAll()
        }
    }

    private func acceptLoop() {
        while let fd = listener.accept() {
            let accepted = queue.withLock { q -> Bool in
                guard q.fds.count < Self.backlog, !q.stopping else { return false }
                q.fds.append(fd)
                return true
            }
            if accepted { ready.withLock { ready.broadcast() } } else { close(fd) }
        }
    }

    private func handle() {
        while true {
            var next: Int32? = nil
            var stop = false
            ready.withLock {
                while true {
                    (next, stop) = queue.withLock { q in (q.fds.popFirst(), q.stopping) }
                    if next != nil || stop { return }
                    ready.wait(nanoseconds: 1_000_000_000)
                }
            }
            guard let fd = next else { if stop { return } else { continue } }
            answer(fd)
            close(fd)
        }
    }

    private func answer(_ client: Int32) {
        let deadline = monotonicNanoseconds() + UInt64(Self.deadlineSeconds) * 1_000_000_000
        var timeout = timeval(tv_sec: 0, tv_usec: 250_000)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // The request head: up to 8 KiB or the blank line, within the deadline.
        var request: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 2048)
        while request.count < 8192 && monotonicNanoseconds() < deadline {
            let n = chunk.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { continue }
                return
            }
            request += chunk[0..<n]
            if request.count >= 4, request.suffix(4) == [13, 10, 13, 10] { break }
            if request.count >= 2, request.suffix(2) == [10, 10] { break }
        }
        let line = String(decoding: request.prefix(while: { $0 != 13 && $0 != 10 }), as: UTF8.self).split(separator: " ")
        let status: String
        var body: [UInt8]
        var contentType = "text/plain; charset=utf-8"
        if line.count >= 2, line[0] == "GET" || line[0] == "HEAD", line[1] == "/metrics" || line[1].hasPrefix("/metrics?") {
            status = "200 OK"
            body = render()
            contentType = "text/plain; version=0.0.4; charset=utf-8"
            if line[0] == "HEAD" { body = [] }
        } else if line.count >= 2, line[0] != "GET" && line[0] != "HEAD" {
            status = "405 Method Not Allowed"
            body = Array("only GET /metrics\n".utf8)
        } else if line.count < 2 {
            return  // no request within the deadline
        } else {
            status = "404 Not Found"
            body = Array("metrics are at /metrics\n".utf8)
        }
        let head = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        let out = Array(head.utf8) + body
        var sent = 0
        while sent < out.count && monotonicNanoseconds() < deadline {
            let n = out.withUnsafeBytes { send(client, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) { continue }
            if n <= 0 { return }
            sent += n
        }
    }
}

/// A `--metrics` address that cannot be used, said so a person can fix it.
public struct MetricsAddressError: Error, CustomStringConvertible {
    public let description: String
    init(_ message: String) { description = message }
}
