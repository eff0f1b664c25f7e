extension Timestamp {
    /// `2026-11-23T08:00:00.123Z`: RFC 3339, UTC, always three fractional digits.
    public var rfc3339: String {
        let ms = milliseconds
        let totalSeconds = ms >= 0 ? ms / 1000 : (ms - 999) / 1000
        let millis = Int(ms - totalSeconds * 1000)
        let days = totalSeconds >= 0 ? totalSeconds / 86_400 : (totalSeconds - 86_399) / 86_400
        let secondOfDay = Int(totalSeconds - days * 86_400)
        let (y, m, d) = Self.civil(fromDays: days)
        // Years 0-9999 (all but the pathological): 24 bytes written in place, no intermediate
        // strings (every event carries one or more of these).
        if (0...9999).contains(y) {
            return String(unsafeUninitializedCapacity: 24) { buffer in
                func put(_ value: Int, _ width: Int, at start: Int) {
                    var v = value
                    for k in stride(from: start + width - 1, through: start, by: -1) {
                        buffer[k] = UInt8(48 + v % 10)
                        v /= 10
                    }
                }
                put(Int(y), 4, at: 0)
                buffer[4] = 45  // -
                put(m, 2, at: 5)
                buffer[7] = 45
                put(d, 2, at: 8)
                buffer[10] = 84  // T
                put(secondOfDay / 3600, 2, at: 11)
                buffer[13] = 58  // :
                put(secondOfDay / 60 % 60, 2, at: 14)
                buffer[16] = 58
                put(secondOfDay % 60, 2, at: 17)
                buffer[19] = 46  // .
                put(millis, 3, at: 20)
                buffer[23] = 90  // Z
                return 24
            }
        }
        func pad(_ v: Int, _ width: Int) -> String {
            let s = String(v)
            return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
        }
        return "\(pad(Int(y), 4))-\(pad(m, 2))-\(pad(d, 2))T\(pad(secondOfDay / 3600, 2)):"
            + "\(pad(secondOfDay / 60 % 60, 2)):\(pad(secondOfDay % 60, 2)).\(pad(millis, 3))Z"
    }

    /// Parses RFC 3339 with any number of fractional digits (kept to the millisecond) and a
    /// `Z` or `±hh:mm` offset. Returns nil for anything else.
    public init?(rfc3339 text: String) {
        let b = Array(text.utf8)
        var i = 0
        func digits(_ n: Int) -> Int? {
            guard i + n <= b.count else { return nil }
            var v = 0
            for k in 0..<n {
                let c = b[i + k]
                guard c >= 48, c <= 57 else { return nil }
                v = v * 10 + Int(c - 48)
            }
            i += n
            return v
        }
        func expect(_ c: UInt8) -> Bool {
            guard i < b.count, b[i] == c else { return false }
            i += 1
            return true
        }
        guard let y = digits(4), expect(45), let mo = digits(2), expect(45), let d = digits(2),
            i < b.count, b[i] == 84 || b[i] == 116 || b[i] == 32
        else { return nil }
        i += 1
        guard let h = digits(2), expect(58), let mi = digits(2), expect(58), let s = digits(2),
            (1...12).contains(mo), (1...Self.daysIn(month: mo, year: y)).contains(d), h < 24, mi < 60, s < 61
        else { return nil }
        var millis = 0
        if i < b.count, b[i] == 46 {
            i += 1
            var scale = 100
            var any = false
            while i < b.count, b[i] >= 48, b[i] <= 57 {
                millis += Int(b[i] - 48) * scale
                scale /= 10
                i += 1
                any = true
            }
            guard any else { return nil }
        }
        var offsetSeconds = 0
        guard i < b.count else { return nil }
        if b[i] == 90 || b[i] == 122 {
            i += 1
        } else if b[i] == 43 || b[i] == 45 {
            let sign = b[i] == 43 ? 1 : -1
            i += 1
            guard let oh = digits(2), expect(58), let om = digits(2), oh < 24, om < 60 else { return nil }
            offsetSeconds = sign * (oh * 3600 + om * 60)
        } else {
            return nil
        }
        guard i == b.count else { return nil }
        let days = Self.days(fromCivil: Int64(y), mo, d)
        let seconds = days * 86_400 + Int64(h * 3600 + mi * 60 + s) - Int64(offsetSeconds)
        self.init(milliseconds: seconds * 1000 + Int64(millis))
    }

    /// Days in `month` (1–12) of `year`, proleptic Gregorian: February has 29 in years
    /// divisible by 4, except centuries not divisible by 400.
    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    // Howard Hinnant's days-from-civil algorithms (proleptic Gregorian calendar).
    static func days(fromCivil year: Int64, _ month: Int, _ day: Int) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = Int64((month + 9) % 12)
        let doy = (153 * mp + 2) / 5 + Int64(day) - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civil(fromDays days: Int64) -> (Int64, Int, Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = Int(doy - (153 * mp + 2) / 5 + 1)
        let m = Int(mp < 10 ? mp + 3 : mp - 9)
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        return (y, m, d)
    }
}
