import BlockStore
import DRAMTier
import Platform
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// Publishing: commits queue blocks (or publish them at once under `sync`), one thread drains the queue in
/// batches and reconnects after failures.
extension ClusterTier {
    // MARK: Write path

    /// After a commit: publishes the block now (`sync`) or queues it (`async`).
    ///
    /// - Parameter payload: the committed bytes, valid during the call (the staging region).
    public func committed(namespace: String, key: String, payload: UnsafeRawBufferPointer, metadata: BlockMetadata, checksum: UInt64?) {
        switch policy(of: namespace) {
        case .off: return
        case .async: enqueue(.publish(namespace: namespace, key: key, queued: monotonicNanoseconds()), holdWriter: true)
        case .sync:
            // While publishing fails (the cluster away), a sync commit would wait out the whole timeout
            // only to be queued anyway: queue it now. The first commit after the cluster went away still
            // waits (that is how it is found out); the publisher's retries find the way back.
            let now = monotonicNanoseconds()
            let away = lock.withLock { () -> Bool in
                let away = state.publishingFails || state.unavailableUntil > now || !tier.isConnected
                if away { state.stats.syncDeferred += 1 }
                return away
            }
            if away {
                enqueue(.publish(namespace: namespace, key: key, queued: now), holdWriter: true)
                return
            }
            let commit = store.locate(namespace: namespace, key: key).map { UInt64($0.commitSeconds) * 1_000_000_000 } ?? wallClockNanoseconds()
            let object = RemoteRecord.encode(namespace: namespace, key: key, payload: payload, metadata: metadata,
                                             commitNanoseconds: commit, payloadChecksum: checksum)
            do {
                try object.withBytes { try tier.publish(name: RemoteRecord.objectName(namespace: namespace, key: key), object: $0) }
                lock.withLock {
                    state.stats.syncPublished += 1
                    notePublished(bytes: object.count, lag: 0)
                }
            } catch {
                lock.withLock {
                    state.stats.publishFailures += 1
                    notePublishFailure(error)
                }
                enqueue(.publish(namespace: namespace, key: key, queued: monotonicNanoseconds()))
            }
        }
    }

    /// Queues a job. A full queue holds a committing writer (`holdWriter`) up to `backpressureSeconds`
    /// while the cluster is answering, then drops the job: commits never wait for a cluster that is
    /// down, and reads (touches) and the publisher itself (announcements) never wait at all.
    func enqueue(_ job: Job, holdWriter: Bool = false) {
        lock.withLock {
            if state.pending >= settings.queueCapacity && holdWriter {
                let deadline = monotonicNanoseconds() + UInt64(settings.backpressureSeconds * 1e9)
                state.stats.backpressureWaits += 1
                while state.pending >= settings.queueCapacity && !state.stopping {
                    let now = monotonicNanoseconds()
                    guard now < deadline, state.unavailableUntil <= now, tier.isConnected else { break }
                    lock.wait(nanoseconds: deadline - now)
                }
            }
            if state.pending >= settings.queueCapacity {
                state.stats.dropped += 1
                return
            }
            state.queue.append(job)
            state.stats.queued += 1
            lock.broadcast()
        }
    }

    // MARK: The publisher

    func run() {
        while true {
            // Connect first (and again after failures); nothing is taken from the queue meanwhile.
            let (stopping, reconnect) = lock.withLock { (state.stopping, state.consecutiveFailures >= 3) }
            if stopping { return }
            if reconnect {
                tier.disconnect()
                lock.withLock { state.consecutiveFailures = 0 }
            }
            if !tier.isConnected {
                do {
                    try tier.connect()
                    lock.withLock {
                        state.stats.connects += 1
                        noteSuccess()
                    }
                    // Announce the shared namespaces (again: the pool may be new, or they were created
                    // while the cluster was away).
                    for ns in store.namespaces() { namespaceChanged(ns) }
                } catch {
                    lock.withLock {
                        state.stats.connectFailures += 1
                        state.stats.lastError = "\(error)"
                        if !state.stopping { lock.wait(nanoseconds: UInt64(settings.backoffSeconds * 1e9)) }
                    }
                    continue
                }
            }
            // Up to `publishBatch` jobs at once, so that many objects are in flight.
            let jobs = lock.withLock { () -> [Job] in
                if state.pending == 0 && !state.stopping { lock.wait(nanoseconds: 1_000_000_000) }
                guard state.pending > 0, !state.stopping else { return [] }
                let n = min(state.pending, max(1, settings.publishBatch))
                let jobs = Array(state.queue.prefix(n))
                state.queue.removeFirst(n)
                lock.broadcast()   // room for writers held by a full queue
                return jobs
            }
            if jobs.isEmpty { continue }
            let failures = perform(jobs)
            guard !failures.isEmpty else { continue }
            lock.withLock {
                var retry: [Job] = []
                for (job, error) in failures {
                    if case .publish = job { state.stats.publishFailures += 1 }
                    notePublishFailure(error)
                    // Kept for when the cluster is back (front of the queue: order is kept).
                    if case .unavailable = error { retry.append(job) }
                }
                if !retry.isEmpty {
                    state.queue.insert(contentsOf: retry, at: 0)
                    if !state.stopping { lock.wait(nanoseconds: UInt64(settings.backoffSeconds * 1e9)) }
                }
            }
        }
    }

    /// Performs jobs; returns those that failed, with why.
    func perform(_ jobs: [Job]) -> [(Job, RemoteTierError)] {
        var failures: [(Job, RemoteTierError)] = []
        var batch: [(job: Job, name: String, object: AlignedBuffer.Filled, queued: UInt64)] = []
        for job in jobs {
            switch job {
            case .touch(let name, let seconds):
                do throws(RemoteTierError) {
                    try tier.touch(name: name, seconds: seconds)
                    lock.withLock { state.stats.touches += 1 }
                } catch { failures.append((job, error)) }
            case .namespace(let name):
                // Gone or no longer shared meanwhile: nothing to announce.
                guard let ns = store.namespace(named: name), policy(of: ns) != .off else { continue }
                var failure: RemoteTierError? = nil
                RemoteNamespace.encode(ns).withUnsafeBytes { bytes in
                    do throws(RemoteTierError) { try tier.publish(name: RemoteNamespace.objectName(name), object: bytes) } catch { failure = error }
                }
                if let failure { failures.append((job, failure)) } else {
                    lock.withLock {
                        state.stats.namespacesPublished += 1
                        state.publishingFails = false
                    }
                }
            case .publish(let namespace, let key, let queued):
                // Gone meanwhile (removed, evicted): nothing to share.
                guard let located = store.locate(namespace: namespace, key: key),
                      let data = try? store.read(located),
                      let metadata = try? store.metadata(namespace: namespace, key: key) else { continue }
                let object = data.withBytes { payload in
                    RemoteRecord.encode(namespace: namespace, key: key, payload: payload, metadata: metadata,
                                        commitNanoseconds: UInt64(located.commitSeconds) * 1_000_000_000, payloadChecksum: data.checksum)
                }
                batch.append((job, RemoteRecord.objectName(namespace: namespace, key: key), object, queued))
            }
        }
        guard !batch.isEmpty else { return failures }
        let results = withExtendedLifetime(batch) {
            tier.publish(batch: batch.map { ($0.name, $0.object.buffer.bytes(count: $0.object.count)) })
        }
        let now = monotonicNanoseconds()
        lock.withLock {
            for (item, error) in zip(batch, results) where error == nil {
                notePublished(bytes: item.object.count, lag: now > item.queued ? now - item.queued : 0)
            }
        }
        for (item, error) in zip(batch, results) { if let error { failures.append((item.job, error)) } }
        return failures
    }
}
