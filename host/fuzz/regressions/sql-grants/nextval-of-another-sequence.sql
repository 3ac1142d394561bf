SELECT v FROM (SELECT nextval('fuzz_theirs_id_seq') AS v FROM fuzz_mine) s
