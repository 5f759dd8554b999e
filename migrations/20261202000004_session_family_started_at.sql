-- Session families get an absolute lifetime (REFRESH_FAMILY_MAX_AGE): every session of a
-- family carries when the family began (the login), rotations copy it, and no session
-- of the family outlives start + max age.
alter table sessions add column family_started_at timestamptz;
update sessions s set family_started_at = f.started
from (select family_id, min(created_at) as started from sessions group by family_id) f
where f.family_id = s.family_id;
alter table sessions alter column family_started_at set default now(),
                     alter column family_started_at set not null;
