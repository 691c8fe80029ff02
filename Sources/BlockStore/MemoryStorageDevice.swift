import WarehouseCore
import Platform
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A store device in memory: `twctl`'s simulations run a real `BlockStore` on it, and the tests use it
/// to model a disk with a volatile write cache (the idea of leveldb's fault_injection_test): writes are
/// visible at once but only become durable at `synchronize`. The fault-injection calls (`losePower`,
/// `modify`, read counters) are `package`: tests reach them, clients of the library do not.
///
/// Thread-safety: all state is behind one mutex.
public final class MemoryStorageDevice: StorageDevice {
    struct FileState {
        var volatile: [UInt8] = []
        var durable: [UInt8] = []
        /// Unsynced writes in order, to replay a prefix of them at power loss.
        var unsynced: [(offset: Int, bytes: [UInt8])] = []
        var durableExists = false
        var bytesRead = 0
    }

    private let files = Mutex<[String: FileState]>([:])
    private let locked = Mutex(false)
    private let syncError = Mutex<Int32?>(nil)
    public let capacity: UInt64

    public init(capacity: UInt64 = 1 << 40) { self.capacity = capacity }

    public var location: String { "memory" }

    public func fileNames() throws -> [String] { files.withLock { Array($0.keys) } }

    public func open(_ name: String, create: Bool) throws -> any DeviceFile {
        try files.withLock { files in
            if files[name] == nil {
                guard create else { throw SystemError(ENOENT, "open", path: name) }
                // File creation is durable once the directory is synced; this model makes it durable at once.
                files[name] = FileState(durableExists: true)
            }
        }
        return MemoryFile(device: self, name: name)
    }

    public func remove(_ name: String) throws { _ = files.withLock { $0.removeValue(forKey: name) } }

    /// Moves the file's volatile and durable contents to the new name, as durable at once as creation is here.
    public func rename(_ name: String, to newName: String) throws {
        try files.withLock { files in
            guard let f = files.removeValue(forKey: name) else { throw SystemError(ENOENT, "rename", path: name) }
            files[newName] = f
        }
    }

    public func replaceAtomically(_ name: String, bytes: [UInt8]) throws {
        files.withLock { $0[name] = FileState(volatile: bytes, durable: bytes, durableExists: true) }
    }

    public func readWhole(_ name: String, limit: Int) throws -> [UInt8]? {
        try files.withLock { files in
            guard var f = files[name] else { return nil }
            if f.volatile.count > limit { throw SystemError(EFBIG, "read (larger than \(limit) bytes)", path: name) }
            f.bytesRead += f.volatile.count
            files[name] = f
            return f.volatile
        }
    }

    public func synchronizeDirectory() throws {}

    public func lockExclusively() throws -> AnyObject {
        try locked.withLock { held in
            if held { throw StoreError.locked("memory store is in use") }
            held = true
        }
        return Unlocker(device: self)
    }

    public func space() -> (total: UInt64, available: UInt64) {
        let used = files.withLock { $0.values.reduce(0) { $0 + UInt64($1.volatile.count) } }
        return (capacity, capacity > used ? capacity - used : 0)
    }

    /// Simulates a power cut: every file goes back to its last synced content, plus (with a generator)
    /// a random number of the unsynced writes in order and a torn part of the next one.
    package func losePower<G: RandomNumberGenerator>(keepingRandomPrefixWith generator: inout G) {
        files.withLock { files in
            for (name, var f) in files {
                var content = f.durable
                let keep = f.unsynced.isEmpty ? 0 : Int.random(in: 0...f.unsynced.count, using: &generator)
                for (i, w) in f.unsynced.enumerated() where i <= keep {
                    var bytes = w.bytes
                    if i == keep { bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &generator))) }
                    if content.count < w.offset + bytes.count {
                        content += [UInt8](repeating: 0, count: w.offset + bytes.count - content.count)
                    }
                    content.replaceSubrange(w.offset..<(w.offset + bytes.count), with: bytes)
                }
                f.volatile = content
                f.durable = content
                f.unsynced = []
                f.bytesRead = 0
                files[name] = f
            }
        }
        locked.withLock { $0 = false }
    }

    /// Simulates a power cut that keeps nothing unsynced.
    package func losePower() {
        files.withLock { files in
            for (name, var f) in files {
                f.volatile = f.durable
                f.unsynced = []
                f.bytesRead = 0
                files[name] = f
            }
        }
        locked.withLock { $0 = false }
    }

    /// Makes every file's `synchronize` fail with `code` (a disk that reports write errors), or succeed
    /// again with nil.
    package func failSyncs(with code: Int32?) { syncError.withLock { $0 = code } }

    func synchronizeError() -> Int32? { syncError.withLock { $0 } }

    /// Bytes read from each file since the last power cycle or `resetReadCounters`.
    package func bytesRead() -> [String: Int] { files.withLock { $0.mapValues(\.bytesRead) } }

    package func resetReadCounters() {
        files.withLock { files in for k in files.keys { files[k]!.bytesRead = 0 } }
    }

    /// Lets a test damage the bytes of a file directly (flip, truncate); the change is durable.
    package func modify(_ name: String, _ body: (inout [UInt8]) -> Void) {
        files.withLock { files in
            guard var f = files[name] else { return }
            body(&f.volatile)
            f.durable = f.volatile
            f.unsynced = []
            files[name] = f
        }
    }

    /// The current bytes of a file.
    package func contents(_ name: String) -> [UInt8]? { files.withLock { $0[name]?.volatile } }

    fileprivate func withFile<T>(_ name: String, _ body: (inout FileState) throws -> T) throws -> T {
        try files.withLock { files in
            guard var f = files[name] else { throw SystemError(ENOENT, "io", path: name) }
            defer { files[name] = f }
            return try body(&f)
        }
    }

    final class Unlocker: Sendable {
        let device: MemoryStorageDevice
        init(device: MemoryStorageDevice) { self.device = device }
        deinit { device.locked.withLock { $0 = false } }
    }
}

final class MemoryFile: DeviceFile {
    let device: MemoryStorageDevice
    let name: String

    init(device: MemoryStorageDevice, name: String) {
        self.device = device
        self.name = name
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        try device.withFile(name) { f in
            let start = Int(offset)
            guard start < f.volatile.count else { return 0 }
            let n = min(buffer.count, f.volatile.count - start)
            f.volatile.withUnsafeBytes { src in
                buffer.baseAddress!.copyMemory(from: src.baseAddress! + start, byteCount: n)
            }
            f.bytesRead += n
            return n
        }
    }

    func dropCachedPages() {}
    func startReading(at offset: UInt64, length: Int) {}
    func readCached(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int { try read(into: buffer, at: offset) }
    func dropCached(at offset: UInt64, length: Int) {}

    func write(_ parts: [UnsafeRawBufferPointer], at offset: UInt64) throws {
        var bytes: [UInt8] = []
        for p in parts { bytes.append(contentsOf: p) }
        try device.withFile(name) { f in
            let start = Int(offset)
            if f.volatile.count < start + bytes.count {
                f.volatile += [UInt8](repeating: 0, count: start + bytes.count - f.volatile.count)
            }
            f.volatile.replaceSubrange(start..<(start + bytes.count), with: bytes)
            f.unsynced.append((start, bytes))
        }
    }

    func synchronize() throws {
        if let code = device.synchronizeError() { throw SystemError(code, "fdatasync", path: name) }
        try device.withFile(name) { f in
            f.durable = f.volatile
            f.unsynced = []
        }
    }

    func zeroRange(at offset: UInt64, length: UInt64) throws {
        try device.withFile(name) { f in
            let start = min(Int(offset), f.volatile.count), end = min(Int(offset + length), f.volatile.count)
            if start < end { f.volatile.replaceSubrange(start..<end, with: [UInt8](repeating: 0, count: end - start)) }
        }
    }

    func truncate(to length: UInt64) throws {
        try device.withFile(name) { f in
            let n = Int(length)
            if f.volatile.count > n { f.volatile.removeSubrange(n...) } else {
                f.volatile += [UInt8](repeating: 0, count: n - f.volatile.count)
            }
            // A truncation is modelled as durable metadata.
            f.durable = f.volatile
            f.unsynced = []
        }
    }

    func length() throws -> UInt64 { try device.withFile(name) { UInt64($0.volatile.count) } }
}
