import BlockStore
import DRAMTier
import Platform
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// Fetching: a local miss looks in the pool (single flight, short negative cache, back-off while the
/// cluster is away); a verified object is stored locally and put in the DRAM tier.
extension ClusterTier {
    // MARK: Read path

    /// Looks for a block the store does not have in the pool; stores it locally when found and sound.
    /// Returns within the tier's timeout.
    ///
    /// - Parameter rememberAbsence: whether a miss enters the negative cache (demand lookups; not hints).
    public func fetch(namespace: String, key: String, rememberAbsence: Bool = true) -> RemoteFetch {
        if policy(of: namespace) == .off { return .absent }
        let blockKey = BlockKey(namespace: namespace, key: key)
        let now = monotonicNanoseconds()
        let skip = lock.withLock { () -> RemoteFetch? in
            if let until = state.negative[blockKey] {
                if until > now {
                    state.stats.negativeHits += 1
                    return .absent
                }
                state.negative[blockKey] = nil
            }
            if state.unavailableUntil > now || !tier.isConnected {
                state.stats.skippedUnavailable += 1
                return .unavailable
            }
            return nil
        }
        if let skip { return skip }
        // Single flight: a prefetch hint and the engine's read often ask for the same block at once.
        // The second must not answer "absent" while the first is storing it (the store refuses a second
        // writer of a name in flight): it waits for the first and takes what it found.
        let deadline = now + UInt64(settings.singleFlightWaitSeconds * 1e9)
        let (mine, waited) = lock.withLock { () -> (Bool, Bool) in
            var waited = false
            while state.fetching.contains(blockKey) {
                waited = true
                let t = monotonicNanoseconds()
                guard t < deadline else { return (false, true) }
                lock.wait(nanoseconds: deadline - t)
            }
            state.fetching.insert(blockKey)
            return (true, waited)
        }
        guard mine else { return .unavailable }
        defer {
            lock.withLock {
                state.fetching.remove(blockKey)
                lock.broadcast()
            }
        }
        if waited {
            if store.locate(namespace: namespace, key: key) != nil {
                lock.withLock { state.stats.joinedFetches += 1 }
                return .stored
            }
            if lock.withLock({ state.negative[blockKey].map { $0 > monotonicNanoseconds() } ?? false }) { return .absent }
        }
        let name = RemoteRecord.objectName(blockKey)
        let object: RemoteObject?
        let readStarted = monotonicNanoseconds()
        do {
            object = try tier.fetch(name: name)
        } catch {
            lock.withLock {
                state.stats.fetchFailures += 1
                noteFailure(error)
            }
            return .unavailable
        }
        let read = monotonicNanoseconds()
        guard let object else {
            lock.withLock {
                state.stats.misses += 1
                if rememberAbsence { remember(absent: blockKey, now: now) }
                noteSuccess()
            }
            return .absent
        }
        var verified = read, stored = read
        do {
            try object.withBytes { bytes in try RemoteRecord.withVerifiedPayload(bytes, namespace: namespace, key: key) { header, payload in
                verified = monotonicNanoseconds()
                let uncompressed = header.flags & RecordFormat.flagCompressedLZ4 == 0
                // The payload lies in a page-aligned buffer of ours with room to the next page: the
                // store may write it in place. A replica: through the page cache, not waited on (the
                // reader waits for this lookup; the pool keeps the block should the copy be lost).
                _ = try store.put(namespace: namespace, key: key, payload: payload, metadata: header.metadata,
                                  commitNanoseconds: header.commitTimeNanoseconds, stagedInPlace: true,
                                  payloadChecksum: uncompressed ? header.payloadChecksum : nil, createDirectories: true,
                                  replica: true)
                stored = monotonicNanoseconds()
                // Into the DRAM tier under the rule every other way in follows: a block not everyone the
                // namespace lets in may read stays out of memory they can map.
                if let dram, let id = store.namespace(named: namespace)?.id,
                   store.accessChain(namespaceID: id, key: key, block: blockKey)?.admitsItsBlockToSharedTier ?? false {
                    dram.insert(blockKey, namespaceID: id, bytes: payload, checksum: uncompressed ? header.payloadChecksum : Checksum.xxh3(payload))
                }
            } }
        } catch let e as StoreError {
            if case .corruption(let why) = e {
                log("twfs: refused a block from \(tier.location): \(why)")
                lock.withLock {
                    state.stats.corrupt += 1
                    remember(absent: blockKey, now: now)
                }
                return .corrupt
            }
            log("twfs: storing \(namespace)/\(key) fetched from \(tier.location) failed: \(e)")
            lock.withLock { state.stats.fetchFailures += 1 }
            return .unavailable
        } catch {
            lock.withLock { state.stats.fetchFailures += 1 }
            return .unavailable
        }
        let seconds = wallClockNanoseconds() / 1_000_000_000
        let done = monotonicNanoseconds()
        let touch = lock.withLock { () -> Bool in
            state.stats.fetched += 1
            state.clusterRead.add(read - readStarted)
            state.verifyTime.add(verified - read)
            state.storeTime.add(stored - verified)
            state.tierTime.add(done - stored)
            state.fetchTime.add(done - readStarted)
            state.stats.fetchedBytes += UInt64(object.count)
            noteSuccess()
            if state.touched.count > 1 << 20 { state.touched.removeAll() }
            let last = state.touched[blockKey] ?? 0
            guard seconds >= last + settings.touchIntervalSeconds else { return false }
            state.touched[blockKey] = seconds
            return true
        }
        if touch { enqueue(.touch(name: name, seconds: seconds)) }
        return .stored
    }

    /// Call with `lock` held.
    func remember(absent key: BlockKey, now: UInt64) {
        if state.negative.count > 1 << 16 { state.negative.removeAll() }
        state.negative[key] = now + UInt64(settings.negativeSeconds * 1e9)
    }

    /// Call with `lock` held.
    func notePublished(bytes: Int, lag: UInt64) {
        state.publishingFails = false
        state.stats.published += 1
        state.stats.publishedBytes += UInt64(bytes)
        state.publishLag.add(lag)
        noteSuccess()
    }

    /// Call with `lock` held.
    func noteSuccess() {
        state.consecutiveFailures = 0
        state.unavailableUntil = 0
    }

    /// Call with `lock` held. A write to the pool (a publish, an announcement, a touch) failed: as
    /// `noteFailure`, and when the cluster is away, `sync` commits queue instead of trying until a
    /// publish gets through (`publishingFails`).
    func notePublishFailure(_ error: any Error) {
        if case .unavailable? = error as? RemoteTierError { state.publishingFails = true }
        noteFailure(error)
    }

    /// Call with `lock` held. A timeout or lost connection opens the back-off window; three failures
    /// in a row also drop the connection, so the publisher opens a fresh one.
    func noteFailure(_ error: any Error) {
        state.stats.lastError = "\(error)"
        guard case .unavailable? = error as? RemoteTierError else { return }
        state.consecutiveFailures += 1
        state.unavailableUntil = monotonicNanoseconds() + UInt64(settings.backoffSeconds * 1e9)
    }
}
