import RunContract

// What a value costs in memory, roughly: the bytes of its strings and a fixed overhead per
// value, node and field. Not exact (Swift's allocator rounds, small strings live inline); it
// is what the run cache counts so that its bound is in bytes whatever the runs carry, a run
// of a few hundred bytes or one with a 1 MiB input.

extension JSONValue {
    /// About the memory this value holds.
    public var approximateBytes: Int {
        switch self {
        case .null, .bool, .int, .double: 16
        case .string(let s): 32 + s.utf8.count
        case .array(let values): values.reduce(32) { $0 + 16 + $1.approximateBytes }
        case .object(let object): object.approximateBytes
        }
    }
}

extension JSONObject {
    /// About the memory this object holds.
    public var approximateBytes: Int {
        reduce(32) { $0 + 48 + $1.key.utf8.count + $1.value.approximateBytes }
    }
}

extension ErrorInfo {
    var approximateBytes: Int { 48 + message.utf8.count + (code?.utf8.count ?? 0) }
}

extension Action {
    /// About the memory this action holds.
    public var approximateBytes: Int {
        256 + id.utf8.count + fields.approximateBytes + (result?.approximateBytes ?? 0) + (error?.approximateBytes ?? 0)
            + (heartbeatDetails?.approximateBytes ?? 0)
    }
}

extension Run {
    /// About the memory this run holds: its fixed fields and config, and what its input,
    /// metadata, actions, result and usage carry.
    public var approximateBytes: Int {
        // 1 KiB for the fixed fields and the config (a few numbers, a retry policy, a webhook).
        var bytes = 1024 + runID.utf8.count + (agentID?.utf8.count ?? 0) + (previousRunID?.utf8.count ?? 0)
        bytes += (input?.approximateBytes ?? 0) + (metadata?.approximateBytes ?? 0) + (result?.approximateBytes ?? 0)
        bytes += (usage?.approximateBytes ?? 0) + (resumeFrom?.approximateBytes ?? 0) + (error?.approximateBytes ?? 0)
        for action in actions { bytes += action.approximateBytes }
        return bytes
    }
}
