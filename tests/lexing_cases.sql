-- Tricky text for tests/test_lexing_agrees.py (issue #11, class 1: one reading).
--
-- Each case starts at a line "-- case: <id>" and runs to the next one; trailing newlines of a
-- case are dropped, so a case may end inside a line comment at the very end of the text.  The
-- test sends every case, as one simple-protocol Query, to PostgreSQL 15 with
-- standard_conforming_strings = on and client_encoding = UTF8 (what the proxy pins for agent
-- sessions), inside a transaction it rolls back, and compares the server's command tags with
-- policyc.proxy.judge.classify: same number of statements, same kinds; then it re-runs the
-- statement texts classify cut out (one by one, and joined the way the proxy re-sends them)
-- and requires the same tags and rows.  Every case must therefore be valid SQL that runs.
--
-- Cases may read and write the TEMP table lex_t (v text, n int), empty at the start of each
-- case, and use the names lex_p (prepared statement) and lex_c (cursor).  No COMMIT, ROLLBACK
-- or END: the test owns the transaction.
--
-- Raw control characters: the cases line-comment-ends-at-cr, line-comment-ends-at-crlf,
-- string-continues-after-cr and whitespace-form-feed contain real CR (0x0d) and FF (0x0c)
-- bytes, line-comment-does-not-end-at-unicode-line-breaks real 0x1c-0x1e bytes and U+0085,
-- U+2028, U+2029 (line breaks to Python's str.splitlines, not to PostgreSQL); the test checks
-- they are still there: keep editors from normalizing this file.
--
-- About multibyte text: in UTF-8 every byte of a multibyte character is >= 0x80 (lead bytes
-- 0xC2-0xF4, continuation bytes 0x80-0xBF), so no byte of one can ever be read as a quote
-- (0x27), a backslash (0x5C), a semicolon (0x3B) or a dollar sign.  In SJIS, BIG5, GBK,
-- GB18030 and JOHAB the second byte of a two-byte character may be 0x5C (and in JOHAB 0x3B):
-- that is why the proxy pins client_encoding to UTF8.  The "lookalike" cases below use such
-- characters, and Unicode characters that merely look like quotes or semicolons.

-- case: plain-backslash
SELECT '\' AS one_backslash;

-- case: plain-two-backslashes
SELECT '\\' AS two_backslashes, length('\\') AS two;

-- case: plain-backslash-before-closing-quote
SELECT 'a\'; SELECT 'b\' AS second_statement;

-- case: plain-classic-smuggle-is-one-select
SELECT '\', '; SELECT 2; SELECT ' -- ';

-- case: plain-backslash-then-doubled-quote
SELECT '\''' AS backslash_quote, '\''''';

-- case: plain-doubled-quotes
SELECT 'it''s; ok' AS a, '''' AS b, '''''' AS c, '' AS d;

-- case: plain-comment-and-quote-starts-inside
SELECT '; -- /* */ $$ $a$ " E''x U&' AS x;

-- case: plain-star-slash-inside-and-quotes-in-comments
SELECT 1 /* it's */ AS b, '/*' AS c, '*/' AS d, 3 -- it's
  AS e;

-- case: plain-continuation-over-newline
SELECT 'a;'
  'b'
'c' AS joined;

-- case: plain-continuation-over-line-comment
SELECT 'a' -- it's ; a comment between the pieces
  'b' AS joined;

-- case: plain-backslash-newline
SELECT 'a\
b' AS backslash_newline;

-- case: e-escaped-quote
SELECT E'\'' AS quote;

-- case: e-escaped-quote-hides-statements
SELECT E'\'; SELECT 2; \'' AS one_string;

-- case: e-backslashes
SELECT E'\\' AS one, E'\\\\' AS two, E'a\\' AS a_backslash;

-- case: e-backslash-then-close
SELECT E'\\'; SELECT 2 AS second_statement;

-- case: e-doubled-quotes
SELECT E'it''s' AS a, e'\'''' AS two_quotes, E'''\'' AS also_two;

-- case: e-escapes-that-make-quotes
SELECT E'\x27' AS hex, E'\047' AS octal, E'\u0027' AS u4, E'\U00000027' AS u8,
       E'\x3B\x5c' AS semi_backslash, E'\b\f\n\r\t' AS controls;

-- case: e-surrogate-pair
SELECT E'\uD83D\uDE00' AS grin, E'\U0001F600' AS same;

-- case: e-lowercase-and-continuation
SELECT e'a\''
'b;'
   'c' AS joined;

-- case: e-unknown-escapes
SELECT E'\q\;\-\/\*' AS dropped_backslashes;

-- case: e-after-identifier-is-a-typed-literal
SELECT text E'x;\'' AS typed;

-- case: uamp-string
SELECT U&'d\0061t\+000061' AS data;

-- case: uamp-uescape
SELECT U&'d!0061t!+000061' UESCAPE '!' AS data;

-- case: uamp-uescape-semicolon
SELECT U&'x;003B;0027;005C' UESCAPE ';' AS semi_quote_backslash;

-- case: uamp-uescape-after-comments-and-newlines
SELECT U&'d#0061t' /* ; ' */ UESCAPE -- ; it's
  '#' AS dat;

-- case: uamp-escapes-making-quotes
SELECT U&'\0027' AS quote, U&'\005C' AS backslash, U&'\\' AS also_backslash, U&'\003B' AS semi;

-- case: uamp-lowercase-continuation-uescape
SELECT u&'!0041'
'!0042' UESCAPE '!' AS ab;

-- case: uamp-doubled-quote
SELECT U&'it''s' AS x, U&'''' AS q;

-- case: uamp-identifier
SELECT 1 AS U&"d\0061t\+000061", 2 AS U&"x!003B" UESCAPE '!';

-- case: uamp-identifier-with-quote-characters
SELECT 1 AS U&"\0022;\0027", 2 AS U&"\005C";

-- case: uamp-four-byte
SELECT U&'\+01F600' AS grin, U&"\+01D11E" AS clef FROM (SELECT 1 AS "𝄞") AS s;

-- case: ident-specials
SELECT 1 AS "a;b", 2 AS "c'd", 3 AS "e""f", 4 AS "g\h", 5 AS "--", 6 AS "/*", 7 AS "$$",
       8 AS "*/";

-- case: ident-backslash-before-closing-quote
SELECT 1 AS "x\"; SELECT 2 AS "y\";

-- case: ident-keywords
SELECT 1 AS "select", 2 AS "SELECT", 3 AS "from";

-- case: ident-too-long-is-truncated
SELECT 1 AS a_very_long_identifier_that_is_longer_than_sixty_three_bytes_by_quite_a_bit,
       2 AS "ソソソソソソソソソソソソソソソソソソソソソソソソ";

-- case: ident-with-dollars
SELECT 1 AS a$b, 2 AS a$$b$$, 3 AS x$q$;

-- case: ident-dollar-then-dollar-quote
SELECT 1 AS x$q$, $q$;$q$ AS y;

-- case: dollar-empty-tag
SELECT $$it's; "quoted" \ -- /* E'$$ AS x;

-- case: dollar-tagged
SELECT $tag$ $$ ; ' $tag$ AS x;

-- case: dollar-tag-prefixes
SELECT $ab$ $a$ ; $abc$ $ab$ AS x;

-- case: dollar-tags-are-case-sensitive
SELECT $A$ $a$ ; $A$ AS x;

-- case: dollar-tag-characters
SELECT $_$ ; $_$ AS a, $ä$ ; $ä$ AS b, $t1$ ; $t1$ AS c, $ソ$;'$ソ$ AS d;

-- case: dollar-digits-inside
SELECT $$$1$$ AS y, $x$$1$x$ AS z;

-- case: dollar-glued-to-keyword
SELECT $$a$$AS x;

-- case: dollar-nested-in-do
DO $outer$ BEGIN PERFORM $inner$ ; $outer $inner$; END $outer$;

-- case: param-vs-dollar-quote
PREPARE lex_p(text) AS SELECT $1 || $a$;$1$a$ AS x; EXECUTE lex_p('b;'); DEALLOCATE lex_p;

-- case: param-in-identifier
SELECT 1 AS a$1, 2 AS "$1";

-- case: block-comment-nested
SELECT 1 /* outer /* inner ; */ still comment ; ' */ AS x;

-- case: block-comment-nested-between-statements
SELECT 1/* /* */ ; */; SELECT 2;

-- case: block-comment-slash-star-slash
SELECT 1 /*/ still ; a comment */ AS x;

-- case: block-comment-stars
SELECT 1 /***/ + /** / **/ 1 AS two;

-- case: block-comment-holds-line-comment
SELECT 1 /* -- */ AS x;

-- case: block-comment-deep
SELECT 1 /* 1 /* 2 /* 3 /* 4 /* 5 /* 6 /* 7 /* 8 ; */ */ */ */ */ */ */ */ AS x;

-- case: line-comment-holds-block-start
SELECT 1 -- /* ;
  AS x; SELECT 2 -- */

-- case: line-comment-ends-at-newline
SELECT 1 -- ; SELECT 2
  , 3;

-- case: line-comment-ends-at-cr
SELECT 1 -- ; SELECT 2, 3; SELECT 4 -- ;AS four;

-- case: line-comment-ends-at-crlf
SELECT 1 -- ; SELECT 2
, 3;

-- case: string-continues-after-cr
SELECT 'a''b' AS joined;

-- case: line-comment-at-end-of-text
SELECT 1; SELECT 2 -- ; SELECT 3

-- case: comment-only
/* nothing ; here */ -- at all

-- case: comments-between-statements
SELECT 1; /* ; */ ; -- ;
 SELECT 2;

-- case: whitespace-form-feed
SELECT1	AS	x;

-- case: op-minus-minus-is-a-comment
SELECT 1 --1
  AS x;

-- case: op-glued-line-comment
SELECT 1--1
;

-- case: op-minus-after-comment
SELECT 2 /*x*/ - 1 AS one;

-- case: op-star-before-comment
SELECT 2 */*x*/ 3 AS six, 2*/**/3 AS also_six;

-- case: op-plus-before-line-comment
SELECT 2 +-- c
 1 AS three;

-- case: op-minus-before-block-comment
SELECT 2 -/* c */ 1 AS one;

-- case: op-trailing-minus-is-split
SELECT 2 *-1 AS m2, 4 /-1 AS m4, 1 <-1 AS f, 3 +-2 AS one;

-- case: op-assorted
SELECT 1 <> 2, 1 != 2, 3 >= 2, 'a' || 'b', 2 ^ 3, |/ 16, ~ 5, 7 % 3, @ -5;

-- case: typed-literals-and-casts
SELECT '1'::int AS "::", text'a;b' AS typed, interval'1 day' AS iv, int4 '7' AS n;

-- case: numbers
SELECT 1.5e-3 AS a, .5 AS b, 5. AS c, 1.e2 AS d, 1e1 x, 0.5::numeric AS f, 10 AS "1e1x";

-- case: empty-semicolons
;;;

-- case: empty-statements-around
;; SELECT 1;; ;SELECT 2;;

-- case: utf8-two-three-four-byte
SELECT 'é€𝄞😀' AS s, length('é€𝄞😀') AS chars, octet_length('é€𝄞😀') AS bytes;

-- case: utf8-sjis-trailing-5c
SELECT 'ソ' AS so, '表' AS hyo, '予' AS yo, '能' AS no, '十' AS ju, 'Ы' AS y, '―' AS dash;

-- case: utf8-big5-gbk-johab-trailing-5c-or-3b
SELECT '功' AS big5, 'α' AS big5_alpha, '乗' AS gbk, '㘎' AS gb18030, 'ヌ' AS johab_5c,
       'カ' AS johab_3b;

-- case: utf8-sjis-characters-before-quotes
SELECT 'ソ\' AS a, E'ソ\\' AS b, $$ソ\$$ AS c, 'ソ'; SELECT 'ソ' AS d;

-- case: utf8-identifiers
SELECT 1 AS ソ, 2 AS 表, 3 AS "予\", 4 AS Äb;

-- case: utf8-lookalikes-are-letters
SELECT 1 AS a；SELECT, 2 AS b;

-- case: utf8-lookalike-quotes-in-identifiers
SELECT 1 AS it＇s, 2 AS a b, 3 AS x;y, 4 AS z’s;

-- case: utf8-lookalike-quotes-in-strings
SELECT '’‘“”＇＂＼¥₩；' AS lookalikes;

-- case: utf8-utf16-would-hold-27-or-5c
SELECT '❜✀尧' AS utf16_has_27_5c;

-- case: utf8-invisible-characters-in-identifiers
SELECT 1 AS a​b, 2 AS c d, 3 AS ef, 4 AS g­h;

-- case: line-comment-does-not-end-at-unicode-line-breaks
SELECT 1 --  ; SELECT 2 ; SELECT 3; SELECT 4; SELECT 5; SELECT 6
  AS one;

-- case: e-backslash-then-doubled-quote
SELECT E'\\''' AS backslash_quote, E'\\'';''' AS with_semicolon;

-- case: strings-inside-strings
SELECT '{"a\";b", "c''d"}'::text[] AS arr, '{"k": "\u0027;"}'::json ->> 'k' AS js,
       ARRAY[';', $$;$$, E'\;'] AS arr2, 'a' COLLATE "C" AS coll, (1)::text || $$;$$ AS cat;

-- case: cast-and-whitespace-variants
SELECT 1 ::int AS a, 2:: int AS b, '3' :: int AS c, $$4$$::int AS d, E'5'::int AS e;

-- case: bit-and-hex
SELECT B'01' AS b, X'AF' AS x, b'1' AS lb, x'f' AS lx, B'' AS empty;

-- case: bit-and-hex-continuation
SELECT B'01'
'10' AS b, X'A'
'F' AS x;

-- case: national
SELECT N'x;y' AS a, n'''' AS b;

-- case: set-show-reset
SET LOCAL application_name = 'a;b'; SHOW application_name; RESET application_name;
SET lex.x = $$';$$; SHOW lex.x;

-- case: set-pinned-values
SET NAMES 'UTF8'; SET client_encoding = 'UTF8'; SHOW client_encoding;
SET standard_conforming_strings = on; SHOW standard_conforming_strings;

-- case: writes
INSERT INTO lex_t VALUES (';', 1), ($$'$$, 2), (E'\\', 3);
UPDATE lex_t SET v = v || '--' WHERE n = 1;
DELETE FROM lex_t WHERE v = '\';
SELECT v, n FROM lex_t ORDER BY n;

-- case: insert-returning
INSERT INTO lex_t VALUES ('x;', 1) RETURNING v || ';' AS v, n;

-- case: merge
MERGE INTO lex_t t USING (VALUES (';', 9)) AS s (v, n) ON t.n = s.n
WHEN NOT MATCHED THEN INSERT VALUES (s.v, s.n);
SELECT * FROM lex_t;

-- case: savepoints
SAVEPOINT "a;b"; SELECT ';'; RELEASE SAVEPOINT "a;b"; SAVEPOINT s; ROLLBACK TO SAVEPOINT s;

-- case: explain
EXPLAIN (COSTS OFF) SELECT ';' AS x;

-- case: cursor
DECLARE lex_c CURSOR FOR SELECT ';' AS x UNION ALL SELECT '--' UNION ALL SELECT '/*';
FETCH 1 FROM lex_c; MOVE lex_c; FETCH lex_c; CLOSE lex_c;

-- case: do-blocks
DO $$BEGIN PERFORM ';'; END$$; DO LANGUAGE plpgsql 'BEGIN PERFORM ''a;b''; END';

-- case: table-and-values
TABLE lex_t; VALUES (';', '--'), ('/*', '*/');

-- case: listen-notify
LISTEN "a;b"; NOTIFY "a;b", ';'; UNLISTEN *;

-- case: ddl-on-temp
CREATE TEMP TABLE "lex;t2" (v text DEFAULT ';'); DROP TABLE "lex;t2";

-- case: lock
LOCK TABLE lex_t IN ACCESS SHARE MODE;

-- case: begin-inside-transaction
BEGIN; SELECT 1 AS x;
