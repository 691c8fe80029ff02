import Platform
#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.1 server for Prometheus scrapes: `GET /metrics` answers the exposition text, any
/// other path 404. One connection at a time on one thread (scrapes are rare and small); every socket
/// has a 5 s timeout so a stuck client cannot hold it.
public final class MetricsServer: Sendable {
    public let address: String
    public let port: UInt16
    private let listener: Int32
    private let render: @Sendable () -> [UInt8]
    private let thread = Locked<BackgroundThread?>(nil)
    private let stopping = Locked(false)

    /// Binds `address` ("HOST:PORT", ":PORT" for all interfaces; IPv4).
    public init(address: String, render: @escaping @Sendable () -> [UInt8]) throws {
        let parts = address.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let port = UInt16(parts[1]) else { throw SystemError(EINVAL, "--metrics wants HOST:PORT, not '\(address)'") }
        let host = parts[0].isEmpty ? "0.0.0.0" : String(parts[0])
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &sin.sin_addr) == 1 else {
            throw SystemError(EINVAL, "--metrics: '\(host)' is not an IPv4 address")
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError.last("socket", path: address) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 16) == 0 else {
            let e = SystemError.last("bind", path: address)
            close(fd)
            throw e
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        self.address = host
        self.port = UInt16(bigEndian: actual.sin_port)
        listener = fd
        self.render = render
    }

    public func start() {
        thread.withLock { $0 = BackgroundThread(name: "tw-metrics") { [self] in serve() } }
    }

    public func stop() {
        stopping.withLock { $0 = true }
        shutdown(listener, Int32(SHUT_RDWR))
        thread.withLock { $0 }?.join()
        close(listener)
    }

    private func serve() {
        while !stopping.withLock({ $0 }) {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            answer(client)
            close(client)
        }
    }

    private func answer(_ client: Int32) {
        // Read the request head (up to 8 KiB or the blank line).
        var request: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 2048)
        while request.count < 8192 {
            let n = chunk.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
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
        } else {
            status = "404 Not Found"
            body = Array("metrics are at /metrics\n".utf8)
        }
        let head = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        var out = Array(head.utf8) + body
        var sent = 0
        while sent < out.count {
            let n = out.withUnsafeMutableBytes { send(client, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            sent += n
        }
        out.removeAll()
    }
}
