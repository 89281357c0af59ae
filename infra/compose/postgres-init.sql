-- docker-compose only: the native stack creates the same databases in infra/components/postgres.sh.
CREATE DATABASE orders;
CREATE DATABASE inventory;
CREATE DATABASE projection;
