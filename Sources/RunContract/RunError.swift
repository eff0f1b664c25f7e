/// A refusal with one of the contract's error codes and a message a person can act on.
/// `message` never holds credentials; it may quote the offending field's name.
public struct RunError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The contract's error codes. A struct rather than an enum so that a newer worker's code
    /// still decodes in an older client.
    public struct Code: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let malformedMessage = Code(rawValue: "malformed_message")
        public static let validationError = Code(rawValue: "validation_error")
        public static let unknownCommand = Code(rawValue: "unknown_command")
        public static let runNotFound = Code(rawValue: "run_not_found")
        public static let runExists = Code(rawValue: "run_exists")
        public static let invalidTransition = Code(rawValue: "invalid_transition")
        public static let actionNotFound = Code(rawValue: "action_not_found")
        public static let versionConflict = Code(rawValue: "version_conflict")
        public static let payloadTooLarge = Code(rawValue: "payload_too_large")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }

    public static func validation(_ message: String) -> RunError { RunError(.validationError, message) }
}
