# runworker image: build with the Swift toolchain, run on a slim Debian with librabbitmq.
FROM swift:6.1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends librabbitmq-dev pkg-config libsqlite3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product runworker && swift build -c release --product runctl \
    && mkdir /out && cp "$(swift build -c release --show-bin-path)/runworker" "$(swift build -c release --show-bin-path)/runctl" /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends librabbitmq4 libsqlite3-0 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/lib/swift/linux/*.so* /usr/lib/swift/linux/
ENV LD_LIBRARY_PATH=/usr/lib/swift/linux
COPY --from=build /out/runworker /out/runctl /usr/local/bin/
COPY config /app/config
WORKDIR /app
VOLUME /app/data
ENTRYPOINT ["runworker"]
