<?php
// A minimal webhook receiver as partners write them: reads $_POST and keeps what it got.
// Every POST leaves, in $ITEP_CAPTURE_DIR, <webhook-id>.data with the raw bytes of
// $_POST['data'] and <webhook-id>.json with all $_POST fields and the Content-Type seen.
$dir = getenv('ITEP_CAPTURE_DIR');
if ($_SERVER['REQUEST_METHOD'] !== 'POST' || $dir === false) {
    http_response_code(405);
    return true;
}
$id = preg_replace('/[^A-Za-z0-9_-]/', '_', $_SERVER['HTTP_WEBHOOK_ID'] ?? 'no-id');
$record = [
    'post' => $_POST,
    'content_type' => $_SERVER['CONTENT_TYPE'] ?? null,
];
file_put_contents($dir . '/' . $id . '.data', $_POST['data'] ?? '');
$json = json_encode($record, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES);
file_put_contents($dir . '/' . $id . '.json.tmp', $json);
rename($dir . '/' . $id . '.json.tmp', $dir . '/' . $id . '.json');
header('Content-Type: text/plain');
echo 'ok';
return true;
