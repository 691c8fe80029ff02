import ArgumentParser
import BlockStore
import Foundation

/// `twctl cluster`: the tier shared with other nodes through Ceph RADOS (docs/cluster-tier.md).
struct Cluster: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The shared tier across nodes (twfs --cluster): its state, and garbage collection of its pool.",
        subcommands: [ClusterStatus.self, ClusterGC.self])
}

/// One line of `twctl status` for the "remote" object of `.tw/status`.
func remoteStatusLine(_ r: [String: Any]) -> String {
    let connected = (r["connected"] as? Bool) == true
    return "remote      \(r["location"] ?? "?") \(connected ? "connected" : "NOT CONNECTED"): queue \(r["queue_depth"] ?? 0)/\(r["queue_capacity"] ?? 0), "
        + "\(r["published"] ?? 0) published, \(r["fetched"] ?? 0) fetched, \(r["misses"] ?? 0) misses, "
        + "\(r["failed"] ?? 0) failed (\(r["corrupt"] ?? 0) corrupt), \(r["dropped"] ?? 0) dropped"
        + ((r["last_error"] as? String).map { "; last error: \($0)" } ?? "")
}

struct ClusterStatus: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show the shared tier of a mount.")

    @Argument(help: "The mount point.") var mount: String
    @Flag(help: "Print the daemon's JSON.") var json = false

    func run() throws {
        let path = mount + "/.tw/status"
        guard let bytes = FileManager.default.contents(atPath: path),
              let object = try? JSONSerialization.jsonObject(with: bytes) as? [String: Any] else {
            throw ValidationError("\(mount) is not a mounted warehouse (cannot read \(path))")
        }
        guard let remote = object["remote"] as? [String: Any], (remote["enabled"] as? Bool) == true else {
            throw ValidationError("\(mount) shares nothing: mount it with --cluster CONF --pool POOL")
        }
        if json { printJSON(remote) } else { print(remoteStatusLine(remote)) }
    }
}

struct ClusterGC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Remove the least recently used blocks of the shared pool until it holds at most --target bytes.",
        discussion: "Runs in the mount's daemon, which holds the cluster connection. Access times are recorded at most once an hour per object and node; objects never read since written count from their write.")

    @Argument(help: "The mount point of a twfs with --cluster.") var mount: String
    @Option(help: "Bytes the pool may keep (512M, 20G, 1T).") var target: String
    @Flag(help: "Print the daemon's JSON.") var json = false

    func run() throws {
        guard let bytes = SizeParser.parse(target) else { throw ValidationError("--target: '\(target)' is not a size (examples: 512M, 20G)") }
        let answer = try control(mount, "cluster-gc target=\(bytes)")
        if json { printJSON(answer); return }
        func n(_ k: String) -> UInt64 { (answer[k] as? NSNumber)?.uint64Value ?? 0 }
        print("\(answer["location"] ?? "?"): \(n("objects")) objects, \(SizeParser.format(n("bytes_before"))) -> \(SizeParser.format(n("bytes_after"))); "
              + "removed \(n("removed_objects")) objects (\(SizeParser.format(n("removed_bytes")))) in \(answer["seconds"] ?? 0) s")
    }
}
