import Testing
@testable import AMQPClient
