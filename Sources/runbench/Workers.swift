import Foundation
import RunWorkerTestKit

/// What the benchmark reads of a worker beyond the kit's launcher.
extension WorkerProcess {
    var memoryKiB: (rss: Int, hwm: Int) { Proc.memory(pid) ?? (-1, -1) }

    /// Lines of the log at warning level or worse (a clean benchmark has none).
    var problems: [Substring] {
        log.split(separator: "\n").filter { $0.contains(" warning ") || $0.contains(" error ") || $0.contains(" critical ") }
    }
}
