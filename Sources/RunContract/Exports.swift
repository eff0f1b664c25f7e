// The contract speaks JSON: every module that imports the contract gets its JSON values.
@_exported import RunJSON
