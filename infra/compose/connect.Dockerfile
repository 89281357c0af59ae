# Kafka Connect for docker-compose: the official Kafka image plus Debezium's PostgreSQL connector,
# resolved by Maven from the same infra/debezium/pom.xml the native stack uses.
FROM maven:3.9-eclipse-temurin-17 AS plugins
COPY infra/debezium/pom.xml /build/pom.xml
RUN mvn -B -q -f /build/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory=/plugins/debezium-connector-postgres

FROM apache/kafka:4.3.1
COPY --from=plugins /plugins /opt/connect-plugins
COPY infra/compose/connect.properties /opt/connect/connect.properties
EXPOSE 8083
CMD ["/opt/kafka/bin/connect-distributed.sh", "/opt/connect/connect.properties"]
