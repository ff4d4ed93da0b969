-- Login roles for the services, each granted the group roles that migration 0005 creates
-- (eventstore_projector, eventstore_agent, eventstore_auditor, eventstore_operator,
-- eventstore_coordinator) and 0008 extends. Run after
-- `eventstore migrate`, as eventstore_owner (or any role with ADMIN on the group roles), by psql:
--
--   psql -v ON_ERROR_STOP=1 -v projector_password=... -v api_password=... \
--        -v follower_password=... -v operator_password=... -f deploy/postgres/roles.sql
--
-- psql quotes each :'variable' as a literal, so a password never becomes SQL. Idempotent: run it
-- again to rotate passwords. Privileges live on the group roles; login roles only inherit them.

\set ON_ERROR_STOP on

-- The group roles must exist: migrate first.
DO $$
BEGIN
  IF (SELECT count(*) FROM pg_roles WHERE rolname IN ('eventstore_projector', 'eventstore_agent',
      'eventstore_auditor', 'eventstore_operator', 'eventstore_coordinator')) <> 5 THEN
    RAISE EXCEPTION 'the group roles are missing: run `eventstore migrate` (migration 0005) first';
  END IF;
END
$$;

SELECT format('CREATE ROLE %I LOGIN', r)
FROM unnest(ARRAY['es_projector', 'es_api', 'es_follower', 'es_operator']) AS r
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec

-- Login roles inherit the privileges of their group roles.
ALTER ROLE es_projector LOGIN INHERIT PASSWORD :'projector_password';
ALTER ROLE es_api LOGIN INHERIT PASSWORD :'api_password';
ALTER ROLE es_follower LOGIN INHERIT PASSWORD :'follower_password';
ALTER ROLE es_operator LOGIN INHERIT PASSWORD :'operator_password';

-- projector: reads intake decisions, appends to the log, writes read models and offsets.
GRANT eventstore_projector TO es_projector;
-- api: audit queries (auditor), token checks and operator actions (operator), and the kill switch and
-- lease release it performs through the coordinator (coordinator).
GRANT eventstore_auditor, eventstore_operator, eventstore_coordinator TO es_api;
-- follower (subscribers): backfills committed events from the log.
GRANT eventstore_auditor TO es_follower;
-- operator (a person at the CLI): register agents, guard streams, kill/revive through the coordinator,
-- verify and anchor the history (auditor). Resetting stored offsets writes consumer_offsets and the log:
-- run `eventstore offsets reset` as the projector's or the owner's login.
GRANT eventstore_operator, eventstore_coordinator, eventstore_auditor TO es_operator;

SELECT format('GRANT CONNECT ON DATABASE %I TO es_projector, es_api, es_follower, es_operator',
              current_database()) \gexec
