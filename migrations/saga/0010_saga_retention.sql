-- Ended sagas are deleted after the saga retention (`SAGA_RETENTION_DAYS`, store::delete_ended):
-- this index finds them by age without reading the sagas still in flight. FAILED sagas are not
-- in it: they stay until an operator deals with them.
CREATE INDEX sagas_ended ON sagas (updated_at) WHERE state IN ('APPROVED', 'REJECTED');
