import Foundation
import Testing
@testable import AMQPClient

struct ConfigurationTests {
    /// A bare amqp URL gets the documented defaults.
    @Test func defaults() throws {
        let c = try AMQPConfiguration(url: "amqp://h")
        #expect(c.host == "h")
        #expect(c.port == 5672)
        #expect(c.user == "guest" && c.password == "guest")
        #expect(c.vhost == "/")
        #expect(c.heartbeat == 60)
        #expect(c.tls == nil)
        #expect(c.authMechanism == .plain)
    }

    /// amqps defaults to port 5671 and verifies the peer unless told otherwise.
    @Test func amqpsPortAndVerify() throws {
        let c = try AMQPConfiguration(url: "amqps://u:p@broker.example")
        #expect(c.port == 5671)
        #expect(c.tls?.verifyPeer == true)
        let d = try AMQPConfiguration(url: "amqps://u:p@h:1234/?verify=false&cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&auth_mechanism=external")
        #expect(d.port == 1234)
        #expect(d.tls == AMQPConfiguration.TLS(caCertificateFile: "/ca.pem", certificateFile: "/c.pem", keyFile: "/k.pem", verifyPeer: false))
        #expect(d.authMechanism == .external)
    }

    /// The vhost is the percent-decoded path; "/" and empty both mean "/".
    @Test func vhostDecoding() throws {
        #expect(try AMQPConfiguration(url: "amqp://h/").vhost == "/")
        #expect(try AMQPConfiguration(url: "amqp://h").vhost == "/")
        #expect(try AMQPConfiguration(url: "amqp://h/%2f").vhost == "/")
        #expect(try AMQPConfiguration(url: "amqp://h/%2F").vhost == "/")
        #expect(try AMQPConfiguration(url: "amqp://h/prod").vhost == "prod")
        #expect(try AMQPConfiguration(url: "amqp://h/a%2Fb%20c").vhost == "a/b c")
    }

    /// User and password are percent-decoded.
    @Test func credentialsDecoding() throws {
        let c = try AMQPConfiguration(url: "amqp://us%40er:p%3Ass%2Fw%40rd@h:5673/v")
        #expect(c.user == "us@er")
        #expect(c.password == "p:ss/w@rd")
        #expect(c.port == 5673)
    }

    /// Query parameters set heartbeat, timeouts, limits and the connection name; unknown ones are refused.
    @Test func queryParameters() throws {
        let c = try AMQPConfiguration(url: "amqp://h/?heartbeat=5&connection_timeout=2.5&channel_max=10&frame_max=8192&name=worker%201")
        #expect(c.heartbeat == 5)
        #expect(c.connectionTimeout == 2.5)
        #expect(c.channelMax == 10)
        #expect(c.frameMax == 8192)
        #expect(c.connectionName == "worker 1")
        #expect(throws: AMQPError.self) { try AMQPConfiguration(url: "amqp://h/?bogus=1") }
        #expect(throws: AMQPError.self) { try AMQPConfiguration(url: "amqp://h/?heartbeat=x") }
        #expect(throws: AMQPError.self) { try AMQPConfiguration(url: "http://h/") }
        #expect(throws: AMQPError.self) { try AMQPConfiguration(url: "amqp://h/?cacertfile=/x") }
    }

    /// The description shows where we connect but never the password.
    @Test func descriptionHidesPassword() throws {
        let c = try AMQPConfiguration(url: "amqp://alice:s3cr3t-pw@h/v?name=n")
        #expect(!c.description.contains("s3cr3t-pw"))
        #expect(c.description.contains("alice@h:5672"))
        #expect(!"\(c)".contains("s3cr3t-pw"))
    }
}
