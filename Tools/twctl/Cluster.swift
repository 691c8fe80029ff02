import ArgumentParser
import CommandLineTypes
import ControlPlane
import Foundation
import WarehouseCore

/// `twctl cluster`: the tier shared with other nodes through Ceph RADOS (docs/cluster-tier.md).
struct Cluster: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The shared tier across nodes (twfs --cluster): its state, and garbage collection of its pool.",
        subcommands: [ClusterStatus.self, ClusterGC.self])
}

/// One line of `twctl status` for the shared tier.
func remoteStatusLine(_ r: ClusterReport) -> String {
    "remote      \(r.location ?? "?") \(r.connected ? "connected" : "NOT CONNECTED"): queue \(r.queueDepth)/\(r.queueCapacity), "
        + "\(r.published) published, \(r.fetched) fetched, \(r.misses) misses, \(r.failed) failed (\(r.corrupt) corrupt), \(r.dropped) dropped"
        + (r.lastError.map { "; last error: \($0)" } ?? "")
}

struct ClusterStatus: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show the shared tier of a mount.")

    @Argument(help: "The mount point.") var mount: String
    @Flag(help: "Print the daemon's JSON.") var json = false

    func run() throws {
        guard let s = readStatus(mount) else { throw ValidationError("\(mount) is not a mounted warehouse (cannot read \(mount)/.tw/status)") }
        guard s.remote.enabled else { throw ValidationError("\(mount) shares nothing: mount it with --cluster CONF --pool POOL") }
        if json { printJSON(s.remote) } else { print(remoteStatusLine(s.remote)) }
    }
}

struct ClusterGC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Remove the least recently used blocks of the shared pool until it holds at most --target bytes.",
        discussion: "Runs in the mount's daemon, which holds the cluster connection. Access times are recorded at most once an hour per object and node; objects never read since written count from their write.")

    @Argument(help: "The mount point of a twfs with --cluster.") var mount: String
    @Option(help: "Bytes the pool may keep (512M, 20G, 1T).") var target: ByteCount
    @Flag(help: "Print the daemon's JSON.") var json = false

    func run() throws {
        var request = ControlRequest(command: .clusterGC)
        request.target = target.bytes
        let job = try runJob(mount, request)
        if json { printJSON(job); return }
        let g = job.collection ?? GarbageReport()
        print("\(g.location): \(g.objects) objects, \(bytes(g.bytesBefore)) -> \(bytes(g.bytesAfter)); "
              + "removed \(g.removedObjects) objects (\(bytes(g.removedBytes))) in \(String(format: "%.2f", job.seconds)) s")
    }
}
