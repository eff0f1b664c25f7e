import Foundation
import Testing

@testable import RunContract

// Holds the machine-readable contract (docs/schemas) to the worker's codec, from the other side:
// scripts/check-spec proves that every example under docs/schemas/examples is valid (or
// invalid) by the JSON Schemas; these tests prove the worker's decoder says the same.
//   - valid/command: `CommandEnvelope.parse(...).decodeCommand()` accepts it;
//   - invalid/command/<code>--<what>.json: refused with exactly <code> (malformed_message,
//     validation_error, unknown_command) at decode time;
//   - valid/event, valid/reply: decoded by the event, `command_rejected` or reply decoder, and
//     encoded back to the same JSON (so the examples are what the worker writes, key for key);
//   - invalid/event, invalid/reply: refused as malformed_message.

/// The repository's root, from this file's path (Tests/RunContractTests/<file>).
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

/// One example file, labelled `valid/command/start-minimal` in the test report.
struct ContractExample: Sendable, CustomStringConvertible {
    let kind: String
    let valid: Bool
    let name: String
    let path: String

    /// The code an invalid example expects: its file name up to `--`.
    var expectedCode: String? {
        guard !valid, let range = name.range(of: "--") else { return nil }
        return String(name[..<range.lowerBound])
    }

    var bytes: [UInt8] { (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))) ?? [] }
    var description: String { "\(valid ? "valid" : "invalid")/\(kind)/\(name)" }

    static let directory = repositoryRoot.appendingPathComponent("docs/schemas/examples")

    static func all(_ validity: String, _ kind: String) -> [ContractExample] {
        let folder = directory.appendingPathComponent(validity).appendingPathComponent(kind)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        return names.filter { $0.hasSuffix(".json") }.sorted().map {
            ContractExample(
                kind: kind, valid: validity == "valid", name: String($0.dropLast(".json".count)),
                path: folder.appendingPathComponent($0).path)
        }
    }
}

/// Integers as doubles, so that `30` in an example and the `30.0` the worker writes for a
/// duration compare equal; objects already compare without regard to key order.
private func normalized(_ v: JSONValue) -> JSONValue {
    switch v {
    case .int(let i): .double(Double(i))
    case .array(let a): .array(a.map(normalized))
    case .object(let o): .object(JSONObject(o.entries.map { (key: $0.key, value: normalized($0.value)) }))
    default: v
    }
}

private func parsed(_ example: ContractExample) throws -> JSONValue {
    try JSONValue.parse(example.bytes)
}

@Suite struct ContractExamplesTests {
    /// The folders are where the tests look (an empty argument list would pass silently).
    @Test func examplesArePresent() {
        for validity in ["valid", "invalid"] {
            for kind in ["command", "event", "reply"] {
                #expect(!ContractExample.all(validity, kind).isEmpty, "no examples in \(validity)/\(kind) under \(ContractExample.directory.path)")
            }
        }
        for example in ContractExample.all("invalid", "command") {
            #expect(["malformed_message", "validation_error", "unknown_command"].contains(example.expectedCode ?? ""),
                    "\(example): the name must start with the expected code and `--`")
        }
    }

    @Test(arguments: ContractExample.all("valid", "command"))
    func validCommandDecodes(_ example: ContractExample) {
        do throws(RunError) {
            let envelope = try CommandEnvelope.parse(body: example.bytes, routingKey: nil, messageID: nil)
            let command = try envelope.decodeCommand()
            // What the producer's body means survives the worker's own encoding.
            let again = try CommandEnvelope.parse(body: command.encode(), routingKey: command.runID, messageID: nil)
            let decodedAgain = try again.decodeCommand()
            #expect(decodedAgain == command)
        } catch {
            Issue.record("\(example) is valid by docs/schemas/command.json but the worker refuses it: \(error)")
        }
    }

    @Test(arguments: ContractExample.all("invalid", "command"))
    func invalidCommandIsRefused(_ example: ContractExample) {
        let expected = example.expectedCode ?? "?"
        do throws(RunError) {
            let envelope = try CommandEnvelope.parse(body: example.bytes, routingKey: nil, messageID: nil)
            let command = try envelope.decodeCommand()
            Issue.record("\(example) is invalid by docs/schemas/command.json (\(expected)) but the worker decodes it: \(command)")
        } catch {
            #expect(error.code.rawValue == expected, "\(example): \(error)")
        }
    }

    @Test(arguments: ContractExample.all("valid", "event"))
    func validEventDecodesAndEncodesBack(_ example: ContractExample) throws {
        let json = try parsed(example)
        var hotPath: [UInt8]?
        do throws(RunError) {
            let encoded: JSONObject
            if json["type"]?.stringValue == CommandRejected.type {
                encoded = try CommandRejected.decode(example.bytes).jsonObject
            } else {
                let event = try RunEvent.decode(example.bytes)
                encoded = event.jsonObject
                hotPath = event.encode()
            }
            #expect(normalized(.object(encoded)) == normalized(json),
                    "\(example): the worker would write \(String(decoding: encoded.serialized(), as: UTF8.self))")
        } catch {
            Issue.record("\(example) is valid by docs/schemas/event.json but the worker's decoder refuses it: \(error)")
        }
        // The hot-path encoder writes the same as `jsonObject`, so the same as the example.
        if let hotPath {
            #expect(normalized(try JSONValue.parse(hotPath)) == normalized(json), "\(example): encode() wrote \(String(decoding: hotPath, as: UTF8.self))")
        }
    }

    @Test(arguments: ContractExample.all("invalid", "event"))
    func invalidEventIsRefused(_ example: ContractExample) throws {
        let json = try parsed(example)
        do throws(RunError) {
            if json["type"]?.stringValue == CommandRejected.type {
                _ = try CommandRejected.decode(example.bytes)
            } else {
                _ = try RunEvent.decode(example.bytes)
            }
            Issue.record("\(example) is invalid by docs/schemas/event.json but the worker's decoder accepts it")
        } catch {
            #expect(error.code.rawValue == example.expectedCode, "\(example): \(error)")
        }
    }

    @Test(arguments: ContractExample.all("valid", "reply"))
    func validReplyDecodesAndEncodesBack(_ example: ContractExample) throws {
        let json = try parsed(example)
        do throws(RunError) {
            let reply = try CommandReply.decode(example.bytes)
            #expect(normalized(.object(reply.jsonObject)) == normalized(json),
                    "\(example): the worker would write \(String(decoding: reply.encode(), as: UTF8.self))")
        } catch {
            Issue.record("\(example) is valid by docs/schemas/reply.json but the worker's decoder refuses it: \(error)")
        }
    }

    @Test(arguments: ContractExample.all("invalid", "reply"))
    func invalidReplyIsRefused(_ example: ContractExample) {
        do throws(RunError) {
            _ = try CommandReply.decode(example.bytes)
            Issue.record("\(example) is invalid by docs/schemas/reply.json but the worker's decoder accepts it")
        } catch {
            #expect(error.code.rawValue == example.expectedCode, "\(example): \(error)")
        }
    }
}
