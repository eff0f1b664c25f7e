import Testing

@testable import RunStore
@testable import RunStorePostgres
@testable import RunStores
@testable import RunStoreSQLite

@Suite struct StoreURLTests {
    /// Each scheme names its store; a password never appears in what is printed.
    @Test func parsesAndRedacts() throws {
        #expect(try StoreLocation(url: "sqlite:///var/lib/x.sqlite") == .sqlite(path: "/var/lib/x.sqlite"))
        #expect(try StoreLocation(url: "sqlite://data/x.sqlite") == .sqlite(path: "data/x.sqlite"))
        #expect(try StoreLocation(url: "memory:") == .memory)
        let pg = try StoreLocation(url: "postgres://u:secret@db:5432/runs")
        #expect(pg.description == "postgres://u:***@db:5432/runs")
        #expect(throws: StoreError.self) { try StoreLocation(url: "sqlite://") }
        #expect(throws: StoreError.self) { try StoreLocation(url: "mysql://u:secret@h/db") }
    }
}
