#!/usr/bin/env escript
%% Mints Phoenix.Token tokens with Erlang/OTP itself (:erlang.term_to_binary, :crypto), the
%% way Plug.Crypto.sign/4 does (see gen_tokens.py): prints one JSON object of tokens. Used
%% to check gen_tokens.py's hand-written term encoder against the real one (the integer and
%% binary tokens must be byte-identical) and to add a map signed by real ETF ("map_erlang").
%% Run: escript phoenix_token.escript   (Debian: apt-get install erlang-base erlang-crypto)
main(_) ->
    KeyBase = <<"phx-threads-test-secret-key-base-0123456789abcdef0123456789abcdef">>,
    Salt = <<"user socket">>,
    SignedAt = 1767225600000,
    Key = crypto:pbkdf2_hmac(sha256, KeyBase, Salt, 1000, 32),
    Sign = fun(Data) ->
        Body = term_to_binary({Data, SignedAt, 86400}),
        Input = <<(b64u(<<"HS256">>))/binary, ".", (b64u(Body))/binary>>,
        <<Input/binary, ".", (b64u(crypto:mac(hmac, sha256, Key, Input)))/binary>>
    end,
    Map = #{user_id => 42, <<"name">> => <<"Zoë"/utf8>>, roles => [admin, dev],
            <<"pair">> => {1, <<255>>}, <<"big">> => 1 bsl 70, <<"neg">> => -5,
            ok => true, nothing => nil, ratio => 0.5},
    io:format("{\"integer\": \"~s\", \"binary\": \"~s\", \"map_erlang\": \"~s\"}~n",
              [Sign(42), Sign(<<"user-7">>), Sign(Map)]).

b64u(Bin) ->
    B = base64:encode(Bin),
    Url = << <<(case C of $+ -> $-; $/ -> $_; _ -> C end)>> || <<C>> <= B, C =/= $= >>,
    Url.
