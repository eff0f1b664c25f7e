import Testing

@testable import RunWorker

// The broker URL list (`amqp_url` with several nodes) and the order in which the worker tries them.

@Suite struct NodeRotationTests {
    let three = "amqp://u:secret@a:5681/, amqp://u:secret@b:5682/,amqp://u:secret@c:5683/"

    /// A list is split at commas, spaces around entries ignored, order kept; one URL is a list of one.
    @Test func parsesAList() throws {
        #expect(try NodeRotation.parse(three) == ["amqp://u:secret@a:5681/", "amqp://u:secret@b:5682/", "amqp://u:secret@c:5683/"])
        #expect(try NodeRotation.parse("amqp://guest:guest@127.0.0.1:5672/") == ["amqp://guest:guest@127.0.0.1:5672/"])
    }

    /// A bad entry is refused with its position, never with its text (it may hold a password).
    @Test(arguments: [
        ("amqp://u:secret@a/,", "entry 2 of 2 is empty"),
        ("amqp://u:secret@a/,http://u:secret@b/", "entry 2 of 2: scheme must be amqp or amqps"),
        ("", "at least one"),
        ("http://u:secret@b/", "amqp_url: scheme"),
    ])
    func refusesBadEntries(_ list: String, _ message: String) {
        #expect { try NodeRotation.parse(list) } throws: {
            "\($0)".contains(message) && !"\($0)".contains("secret")
        }
    }

    /// The first node is tried first; a refused node moves to the next at once, and only a
    /// whole round of refusals waits, with a growing delay.
    @Test func roundsOfRefusalsBackOff() throws {
        var r = try NodeRotation(list: three)
        #expect(r.current == 0)
        #expect(r.connectFailed() == 0 && r.current == 1)
        #expect(r.connectFailed() == 0 && r.current == 2)
        #expect(r.connectFailed() == 0.2 && r.current == 0)
        #expect(r.connectFailed() == 0 && r.connectFailed() == 0 && r.connectFailed() == 0.4)
        #expect(r.current == 0)
    }

    /// A lost session moves to the next node after the short first delay, and starts a new
    /// round there: the node that was lost is tried last.
    @Test func lostSessionMovesOn() throws {
        var r = try NodeRotation(list: three)
        _ = r.connectFailed()  // node 0 refused; node 1 answers
        #expect(r.sessionEnded() == 0.2 && r.current == 2)
        #expect(r.connectFailed() == 0 && r.current == 0)
        #expect(r.connectFailed() == 0 && r.current == 1)
        #expect(r.connectFailed() == 0.4 && r.current == 2)
        // A session that was up starts the delays over.
        #expect(r.sessionEnded() == 0.2 && r.current == 0)
    }

    /// With one URL the delays are exactly `ReconnectBackoff`'s.
    @Test func oneURLIsTheOldBackoff() throws {
        var r = try NodeRotation(list: "amqp://127.0.0.1/")
        var b = ReconnectBackoff()
        for wasUp in [false, false, true, false, false, false, false, false, false, true] {
            #expect((wasUp ? r.sessionEnded() : r.connectFailed()) == b.next(sessionWasUp: wasUp))
            #expect(r.url == "amqp://127.0.0.1/")
        }
    }

    /// Logs name a node by host and port only.
    @Test func nodeNamesHaveNoCredentials() {
        #expect(WorkerLoop.nodeName("amqp://u:secret@b:5682/") == "b:5682")
        #expect(WorkerLoop.nodeName("amqps://u:secret@b/") == "b:5671")
    }

    /// `validate()` checks every URL of the list.
    @Test func validatesTheURLList() throws {
        var s = WorkerSettings()
        s.amqpURL = "amqp://a:5681/,amqp://b:5682/"
        try s.validate()
        s.amqpURL = "amqp://a:5681/,amqp://b:99999/"
        #expect { try s.validate() } throws: { "\($0)".contains("entry 2 of 2") }
    }
}
